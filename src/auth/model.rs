//! Users, roles and the signing key as stored in the config group, the commands and
//! reads that change and read them, and the key layout.
//!
//! Keys (config group column family; the config items use `i`, `h` and `r`):
//! - `A u <username>` → [`UserRecord`]
//! - `A o <role>` → [`Role`]
//! - `A k` → the token signing key (32 random bytes), written once per cluster.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const AUTH: u8 = b'A';
const USER: u8 = b'u';
const ROLE: u8 = b'o';
const SIGNING_KEY: u8 = b'k';

/// The built-in role: every permission, plus cluster operations and user management.
/// It is not stored and cannot be changed or deleted.
pub const ADMIN_ROLE: &str = "admin";
/// The user created by the first-admin bootstrap.
pub const ADMIN_USER: &str = "admin";

pub fn user_key(name: &str) -> Vec<u8> {
    let mut k = vec![AUTH, USER];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn user_prefix() -> Vec<u8> {
    vec![AUTH, USER]
}

pub fn role_key(name: &str) -> Vec<u8> {
    let mut k = vec![AUTH, ROLE];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn role_prefix() -> Vec<u8> {
    vec![AUTH, ROLE]
}

pub fn signing_key_key() -> Vec<u8> {
    vec![AUTH, SIGNING_KEY]
}

/// The name after a user or role key's prefix.
pub fn name_of(key: &[u8]) -> Option<String> {
    String::from_utf8(key.get(2..)?.to_vec()).ok()
}

/// What a permission covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Config,
    Naming,
    Db,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Config => "config",
            Resource::Naming => "naming",
            Resource::Db => "db",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    Read,
    /// Includes read.
    Write,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// `access` to `resource` (every kind if `None`) in `namespace` (`*`: every one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub namespace: String,
    pub resource: Option<Resource>,
    pub access: Access,
}

impl Permission {
    pub fn allows(&self, resource: Resource, access: Access, namespace: &str) -> bool {
        self.resource.is_none_or(|r| r == resource)
            && self.access >= access
            && (self.namespace == "*" || self.namespace == namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// argon2id, PHC string format (salt and parameters included).
    pub password_hash: String,
    pub roles: Vec<String>,
    /// Log index of the last password change: tokens carry it, so a new password
    /// invalidates every token issued before.
    pub generation: u64,
}

/// Auth log entries, inside the config group's (`ConfigCommand::Auth`). Hashes and
/// keys are made by the proposing node (they are random), so apply is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Bootstrap(Bootstrap),
    CreateUser(CreateUser),
    DeleteUser(DeleteUser),
    SetPassword(SetPassword),
    SetRoles(SetRoles),
    PutRole(PutRole),
    DeleteRole(DeleteRole),
}

/// Store the signing key unless the cluster has one; create the `admin` user with
/// this password hash unless the cluster has users. Each node with --auth proposes it
/// at start; the first one applied wins, the others change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub signing_key: Vec<u8>,
    pub admin_password_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrapped {
    pub key_created: bool,
    pub admin_created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUser {
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUser {
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPassword {
    pub username: String,
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRoles {
    pub username: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRole {
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRole {
    pub name: String,
}

/// Auth reads, inside the config group's (`ConfigQuery::Auth`). Internal: the API
/// never returns a hash or the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthQuery {
    GetUser(GetUser),
    ListUsers(ListUsers),
    ListRoles(ListRoles),
    GetSigningKey(GetSigningKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUser {
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListUsers;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRoles;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSigningKey;

const MAX_NAME: usize = 64;
pub const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 256;

/// A user or role name: 1-64 of `[A-Za-z0-9._@-]`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._@-".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(ok) {
        return Err(Error::invalid(format!(
            "{what} {name:?} must be 1-{MAX_NAME} characters of [A-Za-z0-9._@-]"
        )));
    }
    Ok(())
}

pub fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(Error::invalid(format!(
            "a password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters long"
        )));
    }
    Ok(())
}

/// A role as given by a client, checked and normalized: a valid, non-reserved name,
/// namespaces by the namespace rules (empty: `public`), and DB permissions for every
/// namespace (the database has none).
pub fn check_role(mut role: Role) -> Result<Role> {
    check_name("role name", &role.name)?;
    if role.name == ADMIN_ROLE {
        return Err(Error::invalid(
            "the admin role is built in and cannot be changed",
        ));
    }
    for p in &mut role.permissions {
        if p.resource == Some(Resource::Db) && p.namespace != "*" {
            return Err(Error::invalid(
                "a db permission's namespace must be \"*\" (the embedded database has no namespaces)",
            ));
        }
        if p.namespace != "*" {
            p.namespace = crate::groups::names::namespace(&p.namespace)?;
        }
    }
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_match_kind_access_and_namespace() {
        let p = |ns: &str, r, a| Permission {
            namespace: ns.into(),
            resource: r,
            access: a,
        };
        let write_config_dev = p("dev", Some(Resource::Config), Access::Write);
        assert!(write_config_dev.allows(Resource::Config, Access::Read, "dev"));
        assert!(write_config_dev.allows(Resource::Config, Access::Write, "dev"));
        assert!(!write_config_dev.allows(Resource::Config, Access::Write, "prod"));
        assert!(!write_config_dev.allows(Resource::Naming, Access::Read, "dev"));
        let read_all = p("*", None, Access::Read);
        assert!(read_all.allows(Resource::Db, Access::Read, ""));
        assert!(read_all.allows(Resource::Naming, Access::Read, "prod"));
        assert!(!read_all.allows(Resource::Config, Access::Write, "prod"));
    }

    #[test]
    fn keys_stay_apart_from_config_items() {
        assert!(user_key("a").starts_with(&user_prefix()));
        assert!(!user_key("a").starts_with(&role_prefix()));
        assert_eq!(name_of(&role_key("ops")).as_deref(), Some("ops"));
        assert_ne!(user_key("")[0], b'i');
    }

    #[test]
    fn names_passwords_and_roles_are_validated() {
        assert!(check_name("user name", "alice@example.com").is_ok());
        assert!(check_name("user name", "").is_err());
        assert!(check_name("user name", "a b").is_err());
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        let admin = Role {
            name: ADMIN_ROLE.into(),
            permissions: vec![],
        };
        assert!(check_role(admin).is_err());
    }
}
