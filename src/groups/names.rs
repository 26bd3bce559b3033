//! The input rules for names that the group APIs share: namespaces, groups, data ids,
//! service and cluster names.

use crate::error::{Error, Result};

/// Check a name: non-empty, at most `max` bytes, every character accepted by `ok`
/// (`chars` describes them in the error).
pub fn check_name(
    field: &str,
    v: &str,
    max: usize,
    ok: fn(char) -> bool,
    chars: &str,
) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if v.len() > max {
        return Err(Error::invalid(format!(
            "{field} is {} characters; the limit is {max}",
            v.len()
        )));
    }
    if let Some(bad) = v.chars().find(|c| !ok(*c)) {
        return Err(Error::invalid(format!(
            "{field} contains {bad:?}; allowed characters are {chars}"
        )));
    }
    Ok(())
}

/// `[A-Za-z0-9._:-]`: Nacos group, data id and service name characters.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// `[A-Za-z0-9_-]`: namespace and cluster characters.
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// Namespace used when a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "public";
/// Group used when a request leaves it empty.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// `value`, or `default` when empty.
pub fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// A namespace (default `public`): 1..=128 characters of `[A-Za-z0-9_-]`.
pub fn namespace(namespace: &str) -> Result<String> {
    let namespace = or_default(namespace, DEFAULT_NAMESPACE);
    check_name("namespace", namespace, 128, is_id_char, "[A-Za-z0-9_-]")?;
    Ok(namespace.into())
}
