//! Input rules of the config API (documented in `proto/nacosd/v1/config.proto` and the
//! README). Every violation names the field and the rule.

use crate::error::{Error, Result};
use crate::groups::config::model::ConfigKey;

pub const MAX_NAME: usize = 256;
pub const MAX_APP_NAME: usize = 128;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG: usize = 64;
pub const MAX_DESCRIPTION: usize = 1024;
pub const TYPES: [&str; 7] = ["text", "json", "xml", "yaml", "html", "properties", "toml"];

pub use crate::groups::names::namespace;
use crate::groups::names::{check_name as check, is_name_char, or_default, DEFAULT_GROUP};

/// Apply defaults and check a key.
pub fn key(namespace: &str, group: &str, data_id: &str) -> Result<ConfigKey> {
    let namespace = self::namespace(namespace)?;
    let group = or_default(group, DEFAULT_GROUP);
    check("group", group, MAX_NAME, is_name_char, "[A-Za-z0-9._:-]")?;
    check(
        "data_id",
        data_id,
        MAX_NAME,
        is_name_char,
        "[A-Za-z0-9._:-]",
    )?;
    Ok(ConfigKey {
        namespace,
        group: group.into(),
        data_id: data_id.into(),
    })
}

/// A list pattern: name characters plus `*`.
pub fn pattern(field: &str, p: &str) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    check(
        field,
        p,
        MAX_NAME,
        |c| is_name_char(c) || c == '*',
        "[A-Za-z0-9._:-] and *",
    )
}

/// The other publish fields; returns the normalized type.
pub fn publish_fields(
    content: &str,
    max_content: usize,
    r#type: &str,
    app_name: &str,
    tags: &[String],
    description: &str,
) -> Result<String> {
    if content.len() > max_content {
        return Err(Error::invalid(format!(
            "content is {} bytes; the limit is {max_content} bytes",
            content.len()
        )));
    }
    let t = if r#type.is_empty() { "text" } else { r#type };
    if !TYPES.contains(&t) {
        return Err(Error::invalid(format!(
            "type {t:?} is not one of {}",
            TYPES.join(", ")
        )));
    }
    if !app_name.is_empty() {
        check(
            "app_name",
            app_name,
            MAX_APP_NAME,
            is_name_char,
            "[A-Za-z0-9._:-]",
        )?;
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "{} tags given; the limit is {MAX_TAGS}",
            tags.len()
        )));
    }
    for tag in tags {
        check("tag", tag, MAX_TAG, is_name_char, "[A-Za-z0-9._:-]")?;
    }
    if description.len() > MAX_DESCRIPTION {
        return Err(Error::invalid(format!(
            "description is {} bytes; the limit is {MAX_DESCRIPTION}",
            description.len()
        )));
    }
    Ok(t.into())
}

/// A cas_md5: empty (absent) or 32 lowercase hex digits.
pub fn md5(field: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || (v.len() == 32
            && v.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} must be empty or 32 lowercase hex digits, got {v:?}"
        )))
    }
}

/// Page number (1-based; 0 means 1) and size (0 means 20, at most 500).
pub fn page(page_no: u32, page_size: u32) -> Result<(u32, u32)> {
    let size = if page_size == 0 { 20 } else { page_size };
    if size > 500 {
        return Err(Error::invalid(format!(
            "page_size {size} exceeds the limit of 500"
        )));
    }
    Ok((page_no.max(1), size))
}
