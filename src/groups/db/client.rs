//! The embedded DB's operations as typed requests (see [`crate::groups::client`]): one
//! write (a batch of statements in one transaction) and one read.

use crate::groups::client::{GroupCommand, GroupQuery, Mutation, Read};
use crate::groups::db::model::{DbCommand, DbQuery, Executed, QueryResult};
use crate::groups::EMBEDDED_DB;

impl GroupCommand for DbCommand {
    const GROUP: &'static str = EMBEDDED_DB;
}

impl GroupQuery for DbQuery {
    const GROUP: &'static str = EMBEDDED_DB;
}

impl Mutation for DbCommand {
    type Command = DbCommand;
    type Reply = Executed;
    fn describe(&self) -> (&'static str, String) {
        let first = self
            .statements
            .first()
            .map(|s| s.sql.chars().take(64).collect())
            .unwrap_or_default();
        ("execute", first)
    }
}

impl Read for DbQuery {
    type Query = DbQuery;
    type Reply = Vec<QueryResult>;
}
