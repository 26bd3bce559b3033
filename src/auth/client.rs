//! The auth operations as typed requests of the config group (see
//! [`crate::groups::client`]): they travel as `ConfigCommand::Auth` and
//! `ConfigQuery::Auth`.

use crate::auth::model::*;
use crate::groups::client::{Mutation, Read};
use crate::groups::config::{ConfigCommand, ConfigQuery};

macro_rules! auth_writes {
    ($($variant:ident => $reply:ty, $op:literal, |$m:ident| $key:expr;)*) => {
        $(
            impl From<$variant> for ConfigCommand {
                fn from(v: $variant) -> Self {
                    ConfigCommand::Auth(AuthCommand::$variant(v))
                }
            }
            impl Mutation for $variant {
                type Command = ConfigCommand;
                type Reply = $reply;
                fn describe(&self) -> (&'static str, String) {
                    let $m = self;
                    ($op, $key)
                }
            }
        )*
    };
}

macro_rules! auth_reads {
    ($($variant:ident => $reply:ty;)*) => {
        $(
            impl From<$variant> for ConfigQuery {
                fn from(v: $variant) -> Self {
                    ConfigQuery::Auth(AuthQuery::$variant(v))
                }
            }
            impl Read for $variant {
                type Query = ConfigQuery;
                type Reply = $reply;
            }
        )*
    };
}

auth_writes! {
    Bootstrap => Bootstrapped, "auth_bootstrap", |_m| String::new();
    CreateUser => u64, "user_create", |m| m.username.clone();
    DeleteUser => u64, "user_delete", |m| m.username.clone();
    SetPassword => u64, "user_password", |m| m.username.clone();
    SetRoles => u64, "user_roles", |m| m.username.clone();
    PutRole => u64, "role_put", |m| m.role.name.clone();
    DeleteRole => u64, "role_delete", |m| m.name.clone();
}

auth_reads! {
    GetUser => Option<UserRecord>;
    ListUsers => Vec<(String, UserRecord)>;
    ListRoles => Vec<Role>;
    GetSigningKey => Option<Vec<u8>>;
}
