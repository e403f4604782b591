//! Changing the users (`ACL SETUSER`, `ACL DELUSER`, the HTTP user routes): on a single node
//! the table is written to `USERS` in the data directory (written aside, synced, renamed);
//! in a cluster it is the metadata group's `users` key, changed by a conditional write through
//! its leader (so two changes at once cannot lose one), and every node's metadata watcher
//! publishes what it reads there.

use std::path::Path;
use std::rc::Rc;

use corekv_schema::codec::{Condition, Consistency, ErrorCode, Op, Reply, SetOp};

use super::{Core, Origin};
use crate::auth::Users;
use crate::cluster::meta::users_key;

/// The file a single node keeps its users in.
pub const USERS_FILE: &str = "USERS";

/// Conditional writes lost to a concurrent change before giving up.
const TRIES: usize = 5;

/// The users stored in `dir`, if any were ever set there.
pub fn load(dir: &Path) -> Result<Option<Users>, String> {
    match std::fs::read(dir.join(USERS_FILE)) {
        Ok(bytes) => Users::decode(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", dir.join(USERS_FILE).display())),
    }
}

fn store(dir: &Path, users: &Users) -> std::io::Result<()> {
    use std::fs::File;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{USERS_FILE}.tmp"));
    std::fs::write(&tmp, users.encode())?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(USERS_FILE))?;
    File::open(dir)?.sync_all()
}

/// Applies `edit` to the users, durably, and publishes the result on this node (the other
/// nodes of a cluster read it within their metadata watch). `edit`'s answer comes back.
pub async fn change<T>(
    core: &Rc<Core>,
    edit: impl Fn(&mut Users) -> Result<T, String>,
) -> Result<T, String> {
    if core.cluster.is_none() {
        let mut users = (*core.node.users.get()).clone();
        let answer = edit(&mut users)?;
        let dir = core.node.data_dir.clone();
        let kept = users.clone();
        glommio::executor()
            .spawn_blocking(move || store(&dir, &kept))
            .await
            .map_err(|e| format!("ERR writing {USERS_FILE}: {e}"))?;
        core.node.users.replace(users);
        return Ok(answer);
    }
    for _ in 0..TRIES {
        let read = core.cluster_op(Op::get(users_key()), Consistency::Strong, Origin::Client).await;
        let (mut users, condition) = match read {
            Reply::Value { value, version, .. } => {
                (Users::decode(&value)?, Condition::IfVersion(version))
            }
            Reply::Error(e) if e.code == ErrorCode::NotFound => {
                (Users::with_default(None), Condition::IfAbsent)
            }
            Reply::Error(e) => {
                return Err(format!("ERR the metadata group cannot answer: {}", e.message));
            }
            other => return Err(format!("ERR unexpected answer {}", other.name())),
        };
        let answer = edit(&mut users)?;
        let set = Op::Set(SetOp {
            key: users_key(),
            value: users.encode().into(),
            ttl_ms: 0,
            keep_ttl: false,
            condition,
        });
        match core.cluster_op(set, Consistency::Strong, Origin::Client).await {
            Reply::Written { .. } => {
                core.node.users.replace(users);
                return Ok(answer);
            }
            Reply::Error(e) if e.code == ErrorCode::ConditionFailed => continue,
            Reply::Error(e) => return Err(format!("ERR users not changed: {}", e.message)),
            other => return Err(format!("ERR unexpected answer {}", other.name())),
        }
    }
    Err("ERR users changed concurrently too often; try again".into())
}
