//! The naming group's operations as typed requests (see [`crate::groups::client`]).

use crate::groups::client::{group_reads, group_writes, GroupCommand, GroupQuery};
use crate::groups::naming::model::*;
use crate::groups::NAMING_PERSISTENT;

impl GroupCommand for NamingCommand {
    const GROUP: &'static str = NAMING_PERSISTENT;
}

impl GroupQuery for NamingQuery {
    const GROUP: &'static str = NAMING_PERSISTENT;
}

group_writes!(NamingCommand {
    Register => Registered, "register", |m| m.service.to_string();
    UpdateInstance => Registered, "update-instance", |m| m.service.to_string();
    Deregister => Deregistered, "deregister", |m| m.service.to_string();
    CreateService => ServiceRecord, "create-service", |m| m.service.to_string();
    UpdateService => ServiceRecord, "update-service", |m| m.service.to_string();
    DeleteService => Deleted, "delete-service", |m| m.service.to_string();
});

group_reads!(NamingQuery {
    GetService => ServiceDetail;
    ListServices => ServicePage;
});
