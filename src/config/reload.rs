//! Reloads: which changed keys outside `[[feeds]]` take effect only at the next start.

use super::Settings;

impl Settings {
    /// The keys outside `[[feeds]]` whose values differ in `new`: a reload applies feed and
    /// market changes only, so these take effect at the next start. Dotted names
    /// (`store.batch_age`); secrets compare in their redacted form, so a changed secret file's
    /// content is not noticed (it is read at start).
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<String> {
        let table = |s: &Settings| match toml::Value::try_from(s) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let (mut old, mut new) = (table(self), table(new));
        old.remove("feeds");
        new.remove("feeds");
        let mut changed = Vec::new();
        diff_keys("", &toml::Value::Table(old), &toml::Value::Table(new), &mut changed);
        changed
    }
}

/// Appends to `out` the dotted keys under `prefix` where `old` and `new` differ (a key present
/// in only one counts).
fn diff_keys(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_keys(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{FeedSettings, Settings};

    #[test]
    fn a_reload_names_the_changed_keys_outside_the_feeds() {
        let old = Settings { feeds: vec![FeedSettings::new("a", "ws://127.0.0.1:1")], ..Settings::default() };
        let mut new = old.clone();
        assert!(old.restart_only_changes(&new).is_empty());
        new.feeds[0].markets = vec!["M".into()];
        new.feeds.push(FeedSettings::new("b", "ws://127.0.0.1:2"));
        assert!(old.restart_only_changes(&new).is_empty(), "feed changes apply live");
        new.dashboard.max_connections += 1;
        new.log.level = "debug".into();
        new.alert_command = Some("/bin/true".into());
        assert_eq!(
            old.restart_only_changes(&new),
            ["alert_command", "dashboard.max_connections", "log.level"].map(String::from).to_vec()
        );
    }
}
