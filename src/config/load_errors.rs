//! Every problem of a config in one run: serde stops at the first unknown key or value of the
//! wrong type, so after each error the merged sources are patched past it and read again.
//!
//! In: the figment that failed and its first error. Out: [`ConfigError::Load`] with every
//! error found (each naming its key and its file or variable) and what
//! [`Settings::validate`] says of the values that did load.
//!
//! Patching, for an error at key `k`: an unknown key is removed; a value of the wrong type,
//! or a missing one, takes the built-in default of `k` (for `feeds[3].backoff.max`, that of
//! any feed); where there is none, the key is removed (an optional setting) or, for an item of
//! a list, the whole list takes its default. Validation problems of a patched key (or of the
//! list holding a patched item) are not reported again. The merged value keeps each value's tag, and the errors found after the
//! first name their file or variable through the tags of the original value.

use std::collections::HashSet;

use figment::Figment;
use figment::error::Kind;
use figment::value::Value;
use serde::Deserialize;

use super::{ConfigError, FeedSettings, Settings, StoreSettings, display_key, feeds};

/// The most errors one run reports; a config this broken has told enough.
const MAX_ERRORS: usize = 100;

/// Reads the settings again past each error; see the module's documentation.
pub(super) fn collect(figment: &Figment, first: figment::Error) -> ConfigError {
    let mut errors: Vec<figment::Error> = first.into_iter().collect();
    // A file that does not parse has no values to read past its error.
    let Ok(original) = figment.find_value("") else {
        return ConfigError::Load { errors, problems: Vec::new() };
    };
    let template = template();
    let mut value = original.clone();
    let mut patched: HashSet<Vec<String>> = HashSet::new();
    let mut pending: Vec<figment::Error> = errors.clone();
    while errors.len() < MAX_ERRORS {
        for error in pending.drain(..) {
            let key = patched_key(&error);
            // A key patched once and failing again would loop: stop with what is known.
            if !patched.insert(key.clone()) || !patch(&mut value, &error, template.as_ref()) {
                return ConfigError::Load { errors, problems: Vec::new() };
            }
        }
        match Settings::deserialize(&value) {
            Ok(partial) => {
                let problems = match partial.validate() {
                    Ok(()) => Vec::new(),
                    Err(ConfigError::Invalid(problems)) => problems,
                    Err(_) => Vec::new(),
                };
                let errored: Vec<String> = patched.iter().map(|k| display_key(k)).collect();
                // A patched key's problems are its error's; a list patched whole for one bad
                // item may look empty to validation, which is that item's error too.
                let related = |key: &str| errored.iter().any(|k| is_within(key, k) || is_within(k, key));
                let problems = problems.into_iter().filter(|p| !related(&p.key)).collect();
                return ConfigError::Load { errors, problems };
            }
            Err(next) => {
                for mut error in next.into_iter() {
                    if error.metadata.is_none() {
                        error.metadata =
                            find_tag(&original, &error.path).and_then(|t| figment.get_metadata(t)).cloned();
                    }
                    pending.push(error.clone());
                    errors.push(error);
                }
            }
        }
    }
    ConfigError::Load { errors, problems: Vec::new() }
}

/// Every setting with a value, as the patch's source of defaults: the built-in defaults with
/// one feed and a store.
fn template() -> Option<Value> {
    let settings = Settings {
        feeds: vec![FeedSettings::new("feed", feeds::defaults::url())],
        store: Some(StoreSettings::default()),
        ..Settings::default()
    };
    Value::serialize(&settings).ok()
}

/// The key an error is about: for a missing field, that field under its table.
fn patched_key(error: &figment::Error) -> Vec<String> {
    let mut key = error.path.clone();
    if let Kind::MissingField(field) = &error.kind {
        key.push(field.to_string());
    }
    key
}

/// Makes `value` readable past `error`; false when it cannot be.
fn patch(value: &mut Value, error: &figment::Error, template: Option<&Value>) -> bool {
    let key = patched_key(error);
    let Some((last, parent)) = key.split_last() else { return false };
    if matches!(error.kind, Kind::UnknownField(..)) {
        return remove(value, &key);
    }
    if let Some(default) = template.and_then(|t| find_template(t, &key)) {
        return set(value, &key, default);
    }
    if is_index(last) {
        // An item of a list with no default item: the list as a whole takes its default.
        return match template.and_then(|t| find_template(t, parent)) {
            Some(default) => set(value, parent, default),
            None => remove(value, parent),
        };
    }
    remove(value, &key)
}

fn is_index(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `key` is `of` or a key inside it (`feeds[0].backoff.max` is within `feeds[0]`).
fn is_within(key: &str, of: &str) -> bool {
    key == of || key.strip_prefix(of).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The default of `key` in the template; any list index reads its first item.
fn find_template(template: &Value, key: &[String]) -> Option<Value> {
    let mut node = template;
    for part in key {
        node = match node {
            Value::Dict(_, dict) => dict.get(part)?,
            Value::Array(_, items) if is_index(part) => items.first()?,
            _ => return None,
        };
    }
    Some(node.clone())
}

/// The tag of the deepest value on `key`'s path: where the key, or its table, was written.
fn find_tag(value: &Value, key: &[String]) -> Option<figment::value::Tag> {
    let mut node = value;
    let mut tag = node.tag();
    for part in key {
        let next = match node {
            Value::Dict(_, dict) => dict.get(part),
            Value::Array(_, items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        let Some(next) = next else { break };
        node = next;
        tag = node.tag();
    }
    (!tag.is_default()).then_some(tag)
}

/// The table or list holding `key`'s last part.
fn container<'v>(value: &'v mut Value, parent: &[String]) -> Option<&'v mut Value> {
    let mut node = value;
    for part in parent {
        node = match node {
            Value::Dict(_, dict) => dict.get_mut(part)?,
            Value::Array(_, items) => items.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn remove(value: &mut Value, key: &[String]) -> bool {
    let Some((last, parent)) = key.split_last() else { return false };
    match container(value, parent) {
        Some(Value::Dict(_, dict)) => dict.remove(last).is_some(),
        _ => false,
    }
}

fn set(value: &mut Value, key: &[String], new: Value) -> bool {
    let Some((last, parent)) = key.split_last() else { return false };
    match container(value, parent) {
        Some(Value::Dict(_, dict)) => {
            dict.insert(last.to_owned(), new);
            true
        }
        Some(Value::Array(_, items)) => match last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
            Some(item) => {
                *item = new;
                true
            }
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_name_and_list_items_of_the_wrong_type_are_named_and_the_rest_is_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tickd.toml");
        let text = "[[feeds]]\nurl = \"htp://x\"\nmarkets = [\"A\", 5]\nchannels = [\"ticker\", 7]\n\
                    [[feeds]]\nname = \"b\"\nmarkets = [\"B\"]\nmax_reconnects = 0\n";
        std::fs::write(&file, text).unwrap();

        let error = Settings::load(Some(&file)).unwrap_err();

        let mut keys = error.keys();
        keys.sort();
        assert_eq!(
            keys,
            [
                "feeds[0]",
                "feeds[0].channels[1]",
                "feeds[0].markets[1]",
                "feeds[0].url",
                "feeds[1].max_reconnects"
            ],
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("missing field `name`"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
    }
}
