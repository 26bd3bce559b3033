//! The auth part of the config group's state machine: deterministic apply and query of
//! [`AuthCommand`] and [`AuthQuery`], called from `groups::config::processor`.

use crate::auth::model::*;
use crate::codec::{decode_stored, encode};
use crate::error::Error;
use crate::groups::client::encode_reply;
use crate::raft::rocks_sm::{ApplyError, KvTxn, KvView};

type Txn<'a, E> = KvTxn<'a, E>;

fn load_user<E>(txn: &Txn<'_, E>, name: &str) -> Result<Option<UserRecord>, ApplyError> {
    Ok(match txn.get(&user_key(name))? {
        Some(b) => Some(decode_stored(&b, "user record")?),
        None => None,
    })
}

fn user_or_not_found<E>(txn: &Txn<'_, E>, name: &str) -> Result<UserRecord, ApplyError> {
    load_user(txn, name)?.ok_or_else(|| Error::NotFound(format!("user {name:?}")).into())
}

/// Every role in `roles` exists (or is the built-in admin role).
fn check_roles_exist<E>(txn: &Txn<'_, E>, roles: &[String]) -> Result<(), ApplyError> {
    for r in roles {
        if r != ADMIN_ROLE && txn.get(&role_key(r))?.is_none() {
            return Err(Error::invalid(format!("role {r:?} does not exist")).into());
        }
    }
    Ok(())
}

pub fn apply<E>(txn: &mut Txn<'_, E>, index: u64, cmd: AuthCommand) -> Result<Vec<u8>, ApplyError> {
    match cmd {
        AuthCommand::Bootstrap(b) => encode_reply(bootstrap(txn, index, b)),
        AuthCommand::CreateUser(c) => encode_reply(create_user(txn, index, c)),
        AuthCommand::DeleteUser(d) => encode_reply(delete_user(txn, index, d)),
        AuthCommand::SetPassword(s) => encode_reply(set_password(txn, index, s)),
        AuthCommand::SetRoles(s) => encode_reply(set_roles(txn, index, s)),
        AuthCommand::PutRole(p) => encode_reply(put_role(txn, index, p)),
        AuthCommand::DeleteRole(d) => encode_reply(delete_role(txn, index, d)),
    }
}

fn bootstrap<E>(
    txn: &mut Txn<'_, E>,
    index: u64,
    b: Bootstrap,
) -> Result<Bootstrapped, ApplyError> {
    let key_created = txn.get(&signing_key_key())?.is_none();
    if key_created {
        txn.put(&signing_key_key(), b.signing_key);
    }
    let admin_created = match b.admin_password_hash {
        Some(hash) if txn.scan_keys(&user_prefix())?.is_empty() => {
            let rec = UserRecord {
                password_hash: hash,
                roles: vec![ADMIN_ROLE.to_string()],
                generation: index,
            };
            txn.put(&user_key(ADMIN_USER), encode(&rec));
            true
        }
        _ => false,
    };
    Ok(Bootstrapped {
        key_created,
        admin_created,
    })
}

fn create_user<E>(txn: &mut Txn<'_, E>, index: u64, c: CreateUser) -> Result<u64, ApplyError> {
    if load_user(txn, &c.username)?.is_some() {
        return Err(Error::AlreadyExists(format!("user {:?}", c.username)).into());
    }
    check_roles_exist(txn, &c.roles)?;
    let rec = UserRecord {
        password_hash: c.password_hash,
        roles: c.roles,
        generation: index,
    };
    txn.put(&user_key(&c.username), encode(&rec));
    Ok(index)
}

fn delete_user<E>(txn: &mut Txn<'_, E>, index: u64, d: DeleteUser) -> Result<u64, ApplyError> {
    user_or_not_found(txn, &d.username)?;
    txn.delete(&user_key(&d.username));
    Ok(index)
}

fn set_password<E>(txn: &mut Txn<'_, E>, index: u64, s: SetPassword) -> Result<u64, ApplyError> {
    let mut rec = user_or_not_found(txn, &s.username)?;
    rec.password_hash = s.password_hash;
    rec.generation = index;
    txn.put(&user_key(&s.username), encode(&rec));
    Ok(index)
}

fn set_roles<E>(txn: &mut Txn<'_, E>, index: u64, s: SetRoles) -> Result<u64, ApplyError> {
    let mut rec = user_or_not_found(txn, &s.username)?;
    check_roles_exist(txn, &s.roles)?;
    rec.roles = s.roles;
    txn.put(&user_key(&s.username), encode(&rec));
    Ok(index)
}

fn put_role<E>(txn: &mut Txn<'_, E>, index: u64, p: PutRole) -> Result<u64, ApplyError> {
    txn.put(&role_key(&p.role.name), encode(&p.role));
    Ok(index)
}

fn delete_role<E>(txn: &mut Txn<'_, E>, index: u64, d: DeleteRole) -> Result<u64, ApplyError> {
    if txn.get(&role_key(&d.name))?.is_none() {
        return Err(Error::NotFound(format!("role {:?}", d.name)).into());
    }
    for key in txn.scan_keys(&user_prefix())? {
        let Some(b) = txn.get(&key)? else { continue };
        let rec: UserRecord = decode_stored(&b, "user record")?;
        if rec.roles.contains(&d.name) {
            let user = name_of(&key).unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "role {:?} is still given to user {user:?}",
                d.name
            ))
            .into());
        }
    }
    txn.delete(&role_key(&d.name));
    Ok(index)
}

pub fn query(view: &KvView<'_>, q: AuthQuery) -> Result<Vec<u8>, Error> {
    match q {
        AuthQuery::GetUser(g) => encode_reply(match view.get(&user_key(&g.username))? {
            Some(b) => Ok(Some(decode_stored::<UserRecord>(&b, "user record")?)),
            None => Ok::<_, Error>(None),
        }),
        AuthQuery::ListUsers(_) => {
            let mut users = Vec::new();
            view.for_each(&user_prefix(), |k, v| {
                let rec: UserRecord = decode_stored(&v, "user record")?;
                users.push((name_of(&k).unwrap_or_default(), rec));
                Ok(())
            })?;
            encode_reply(Ok::<_, Error>(users))
        }
        AuthQuery::ListRoles(_) => {
            let mut roles: Vec<Role> = Vec::new();
            view.for_each(&role_prefix(), |_, v| {
                roles.push(decode_stored(&v, "role")?);
                Ok(())
            })?;
            encode_reply(Ok::<_, Error>(roles))
        }
        AuthQuery::GetSigningKey(_) => encode_reply(Ok::<_, Error>(view.get(&signing_key_key())?)),
    }
}
