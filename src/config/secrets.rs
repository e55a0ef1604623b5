//! Secrets: [`Secret`] and the redaction shared by every secret value, `credential:<name>`
//! files under systemd's `$CREDENTIALS_DIRECTORY`, and the reader of one-line secret files.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

/// A `key_file` starting with this names a systemd credential (`LoadCredential=`), resolved
/// under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_PREFIX: &str = "credential:";

/// A value that must never be printed: `Debug`, `Display` and `Serialize` all render
/// `"<redacted>"`, so it cannot leak through a log line or `check-config`. Deserializes
/// transparently from the inner value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself; call it only where the value is used, never to print it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

pub(super) const REDACTED: &str = "<redacted>";

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// The first line of a secret file, trimmed. The error names the file, never its content.
pub(super) fn first_line(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line)
}

/// `credential:<name>` → `<dir>/<name>` when `dir` is known; anything else as written.
pub(super) fn resolve_key_path(file: &Path, credentials_dir: Option<&OsStr>) -> PathBuf {
    match (credential_name(file), credentials_dir) {
        (Some(name), Some(dir)) => Path::new(dir).join(name),
        _ => file.to_owned(),
    }
}

/// `kalshi` for `credential:kalshi`; `None` for an ordinary path.
pub(super) fn credential_name(file: &Path) -> Option<&str> {
    file.to_str().and_then(|s| s.strip_prefix(CREDENTIAL_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_key_file_resolves_under_the_credentials_directory() {
        let dir = OsStr::new("/run/credentials/tickd.service");
        assert_eq!(
            resolve_key_path(Path::new("credential:kalshi"), Some(dir)),
            Path::new("/run/credentials/tickd.service/kalshi")
        );
        assert_eq!(
            resolve_key_path(Path::new("/etc/tickd/kalshi.pem"), Some(dir)),
            Path::new("/etc/tickd/kalshi.pem")
        );
        // Unresolvable: kept as written so that errors show what the user wrote.
        assert_eq!(resolve_key_path(Path::new("credential:kalshi"), None), Path::new("credential:kalshi"));
    }

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2".to_string());
        #[derive(Serialize)]
        struct Holder {
            password: Secret<String>,
        }

        let shown = [
            format!("{secret}"),
            format!("{secret:?}"),
            toml::to_string(&Holder { password: secret.clone() }).unwrap(),
        ];

        for text in shown {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }
}
