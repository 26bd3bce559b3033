//! The config group's operations as typed requests (see [`crate::groups::client`]).

use crate::groups::client::{group_reads, group_writes, GroupCommand, GroupQuery};
use crate::groups::config::model::*;
use crate::groups::CONFIG;

impl GroupCommand for ConfigCommand {
    const GROUP: &'static str = CONFIG;
}

impl GroupQuery for ConfigQuery {
    const GROUP: &'static str = CONFIG;
}

group_writes!(ConfigCommand {
    Publish => Published, "publish", |m| m.key.to_string();
    Remove => Removed, "remove", |m| m.key.to_string();
});

group_reads!(ConfigQuery {
    Get => Option<ConfigRecord>;
    List => Page;
    History => HistoryPage;
    HistoryAt => Option<HistoryRecord>;
    States => Vec<(Option<String>, u64)>;
});
