//! The open incidents as kept across restarts: `state_dir/alerts.json`, a small JSON file
//! written whole each time (to a temporary file in the same directory, synced, then renamed
//! over the old one and the directory synced), so that a crash leaves the old or the new set,
//! never half of one.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The kept file's name under `state_dir`.
pub const FILE_NAME: &str = "alerts.json";

/// The file's content.
#[derive(Debug, Default, Deserialize, Serialize)]
struct KeptFile {
    /// The incidents open when it was written.
    open: Vec<KeptIncident>,
}

/// One open incident.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct KeptIncident {
    /// `feed_stale`, `max_reconnects`...
    pub kind: String,
    /// `kalshi/0`, `store`, a feed's name.
    pub source: String,
    /// The feed's name, or `store`.
    pub feed: String,
    /// When its alert was first raised, µs since the Unix epoch (part of its id).
    pub started_us: i64,
    /// Its alert's message.
    pub message: String,
}

/// The incidents kept in `file`; none when there is no file.
pub fn read(file: &Path) -> Result<Vec<KeptIncident>, String> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let kept: KeptFile = serde_json::from_slice(&text).map_err(|e| format!("not a kept alerts file: {e}"))?;
    Ok(kept.open)
}

/// Replaces `file` with `incidents`, atomically; makes its directory when missing.
pub fn write(file: &Path, incidents: &[KeptIncident]) -> std::io::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let body =
        serde_json::to_vec_pretty(&KeptFile { open: incidents.to_vec() }).map_err(std::io::Error::other)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&body)?;
    temp.as_file().sync_all()?;
    temp.persist(file).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_no_file_is_no_incident() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join(FILE_NAME);
        let incidents = vec![KeptIncident {
            kind: "feed_stale".into(),
            source: "kalshi/0".into(),
            feed: "kalshi".into(),
            started_us: 1_700_000_000_000_000,
            message: "no data".into(),
        }];

        assert_eq!(read(&file), Ok(Vec::new()));
        write(&file, &incidents).unwrap();
        assert_eq!(read(&file), Ok(incidents));
        write(&file, &[]).unwrap();
        assert_eq!(read(&file), Ok(Vec::new()));
        // Nothing but the file itself is left behind in its directory.
        assert_eq!(std::fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
        std::fs::write(&file, "{").unwrap();
        assert!(read(&file).is_err());
    }
}
