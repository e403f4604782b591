//! Users, their secrets and permissions, and the check of every request against them.
//!
//! A user holds a secret (kept as its SHA-256, as Redis's ACL does: verifying costs about a
//! microsecond, once per connection) and permissions in Redis's ACL terms: command categories
//! (`+@read`, `+@write`, `+@admin`, `+@all`) and key patterns (`~p` for reads and writes,
//! `%R~p` reads only, `%W~p` writes only). A read needs `@read` and a key a read pattern
//! matches; a write, `@write` and a write pattern; FLUSHALL, checkpoint, backup, membership
//! and user changes need `@admin`. Batches check every key.
//!
//! [`Registry`] is the node's table: every core reads it, and a change (rare) swaps it whole.
//! A connection keeps its user and looks at the registry's generation (one atomic load) per
//! request, so a changed or deleted user takes effect on the next request, not at reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use corekv_schema::codec::Op;
use serde::{Deserialize, Serialize};

use crate::resp::glob::Glob;

/// The user a connection is until it authenticates (Redis's name).
pub const DEFAULT_USER: &str = "default";

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Admin,
}

/// One user. `secrets` are SHA-256 digests in hex (a user may hold several, as in Redis,
/// so a password can be rotated without a gap); `nopass` lets any password in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    pub nopass: bool,
    pub secrets: Vec<String>,
    pub read: bool,
    pub write: bool,
    pub admin: bool,
    /// Key patterns for reads and writes (`~p`), reads only (`%R~p`), writes only (`%W~p`).
    pub keys: Vec<String>,
    pub read_keys: Vec<String>,
    pub write_keys: Vec<String>,
    /// The patterns compiled, at the first check (a user is checked many times per change).
    #[serde(skip)]
    compiled: Compiled,
}

/// [`User`]'s patterns, compiled once: (reads, writes), each `~` patterns and its own.
#[derive(Default)]
struct Compiled(std::sync::OnceLock<(Vec<Glob>, Vec<Glob>)>);

impl Clone for Compiled {
    fn clone(&self) -> Compiled {
        Compiled::default()
    }
}

impl PartialEq for Compiled {
    fn eq(&self, _: &Compiled) -> bool {
        true
    }
}

impl Eq for Compiled {}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// Why a request was refused, in Redis's words (the RESP layer prints them as they are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Not authenticated, and the default user cannot be used without a password.
    NoAuth,
    /// Authenticated, but this user may not do that.
    NoPerm(String),
}

impl Denied {
    pub fn message(&self) -> String {
        match self {
            Denied::NoAuth => "NOAUTH Authentication required.".into(),
            Denied::NoPerm(why) => format!("NOPERM {why}"),
        }
    }
}

/// Equality that takes as long however early the inputs differ (digests, not passwords, are
/// compared, but nothing should time a secret's check).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn digest(password: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, password);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl User {
    /// A user as `ACL SETUSER name` makes it: off, no password, no permissions.
    pub fn new(name: &str) -> User {
        User { name: name.to_string(), ..User::default() }
    }

    /// The default user of a node with no users configured: anyone, everything (as Redis
    /// without `requirepass`), or with `requirepass`, everything for that password.
    pub fn default_user(requirepass: Option<&str>) -> User {
        let mut u = User::new(DEFAULT_USER);
        for rule in ["on", "~*", "+@all"] {
            u.apply(rule).expect("a valid rule");
        }
        match requirepass {
            None => u.nopass = true,
            Some(pass) => u.secrets = vec![digest(pass.as_bytes())],
        }
        u
    }

    /// Applies one ACL rule (`on`, `>pass`, `~pattern`, `+@read`, ...).
    pub fn apply(&mut self, rule: &str) -> Result<(), String> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.secrets.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.secrets.clear();
            }
            "allkeys" => self.keys = vec!["*".into()],
            "resetkeys" => {
                self.keys.clear();
                self.read_keys.clear();
                self.write_keys.clear();
            }
            "+@all" | "allcommands" => (self.read, self.write, self.admin) = (true, true, true),
            "-@all" | "nocommands" => (self.read, self.write, self.admin) = (false, false, false),
            "+@read" => self.read = true,
            "-@read" => self.read = false,
            "+@write" => self.write = true,
            "-@write" => self.write = false,
            "+@admin" | "+@dangerous" => self.admin = true,
            "-@admin" | "-@dangerous" => self.admin = false,
            "reset" => *self = User::new(&self.name),
            _ => {
                if let Some(pass) = rule.strip_prefix('>') {
                    let d = digest(pass.as_bytes());
                    if !self.secrets.contains(&d) {
                        self.secrets.push(d);
                    }
                    self.nopass = false;
                } else if let Some(pass) = rule.strip_prefix('<') {
                    let d = digest(pass.as_bytes());
                    self.secrets.retain(|s| *s != d);
                } else if let Some(p) = rule.strip_prefix('~') {
                    self.keys.push(p.to_string());
                } else if let Some(p) = rule.strip_prefix("%R~").or(rule.strip_prefix("%r~")) {
                    self.read_keys.push(p.to_string());
                } else if let Some(p) = rule.strip_prefix("%W~").or(rule.strip_prefix("%w~")) {
                    self.write_keys.push(p.to_string());
                } else if let Some(p) = ["%RW~", "%rw~", "%WR~", "%wr~"]
                    .iter()
                    .find_map(|prefix| rule.strip_prefix(prefix))
                {
                    self.keys.push(p.to_string());
                } else {
                    return Err(format!(
                        "Error in ACL SETUSER modifier '{rule}': Syntax error (this node knows \
                         on, off, >pass, <pass, nopass, resetpass, ~pattern, %R~pattern, \
                         %W~pattern, allkeys, resetkeys, +@read, +@write, +@admin, +@all, \
                         their - forms, reset)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `password` is this user's.
    pub fn accepts(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let d = digest(password);
        self.secrets.iter().any(|s| same(s.as_bytes(), d.as_bytes()))
    }

    /// The user as `ACL LIST` shows it.
    pub fn describe(&self) -> String {
        let mut out = format!("user {} {}", self.name, if self.enabled { "on" } else { "off" });
        if self.nopass {
            out += " nopass";
        }
        for s in &self.secrets {
            out += &format!(" #{s}");
        }
        for (prefix, list) in
            [("~", &self.keys), ("%R~", &self.read_keys), ("%W~", &self.write_keys)]
        {
            for p in list {
                out += &format!(" {prefix}{p}");
            }
        }
        if self.read && self.write && self.admin {
            out += " +@all";
        } else {
            out += " -@all";
            for (on, name) in
                [(self.read, "+@read"), (self.write, "+@write"), (self.admin, "+@admin")]
            {
                if on {
                    out += &format!(" {name}");
                }
            }
        }
        out
    }

    fn key_allowed(&self, key: &[u8], access: Access) -> bool {
        let (reads, writes) = self.compiled.0.get_or_init(|| {
            let compile = |extra: &Vec<String>| -> Vec<Glob> {
                self.keys.iter().chain(extra).map(|p| Glob::new(p.as_bytes())).collect()
            };
            (compile(&self.read_keys), compile(&self.write_keys))
        });
        let patterns = match access {
            Access::Read => reads,
            Access::Write => writes,
            Access::Admin => return true,
        };
        patterns.iter().any(|g| g.matches(key))
    }

    /// Whether this user may read every key (SCAN, KEYS, DBSIZE walk them all).
    pub fn reads_every_key(&self) -> bool {
        self.read && self.keys.iter().chain(&self.read_keys).any(|p| p == "*")
    }

    /// Checks one access, to `key` when it has one.
    pub fn may(&self, access: Access, key: Option<&[u8]>) -> Result<(), Denied> {
        let (granted, category) = match access {
            Access::Read => (self.read, "read"),
            Access::Write => (self.write, "write"),
            Access::Admin => (self.admin, "admin"),
        };
        if !granted {
            let name = &self.name;
            return Err(Denied::NoPerm(format!(
                "User {name} has no permissions to run this command (it needs @{category})"
            )));
        }
        if let Some(key) = key
            && !self.key_allowed(key, access)
        {
            let name = &self.name;
            let what = if access == Access::Read { "read" } else { "write" };
            return Err(Denied::NoPerm(format!(
                "User {name} has no permissions to {what} the key '{}'",
                String::from_utf8_lossy(key)
            )));
        }
        Ok(())
    }

    /// Checks a native operation: every key it reads or writes.
    pub fn check(&self, op: &Op) -> Result<(), Denied> {
        match op {
            Op::Get { key } => self.may(Access::Read, Some(key)),
            Op::Set(set) => self.may(Access::Write, Some(&set.key)),
            Op::Delete { key, .. } => self.may(Access::Write, Some(key)),
            Op::Cas { key, .. } => {
                self.may(Access::Read, Some(key))?;
                self.may(Access::Write, Some(key))
            }
            Op::Batch(ops) => ops.iter().try_for_each(|op| self.check(op)),
            Op::Ping { .. } | Op::Topology | Op::Authenticate { .. } => Ok(()),
            Op::Stats => self.may(Access::Read, None),
            Op::Checkpoint | Op::Backup { .. } => self.may(Access::Admin, None),
        }
    }
}

/// Every user, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    pub users: BTreeMap<String, User>,
}

impl Users {
    /// A node's users before any is configured: the default one only.
    pub fn with_default(requirepass: Option<&str>) -> Users {
        let mut users = Users::default();
        users.users.insert(DEFAULT_USER.into(), User::default_user(requirepass));
        users
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("users serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Users, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("users: {e}"))
    }

    /// `ACL SETUSER name rules...`: creates the user if new (off, nothing allowed), then
    /// applies the rules in order; nothing changes if one is wrong.
    pub fn set_user(&mut self, name: &str, rules: &[&str]) -> Result<(), String> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("ERR invalid user name {name:?}"));
        }
        let mut user = self.users.get(name).cloned().unwrap_or_else(|| User::new(name));
        for rule in rules {
            user.apply(rule).map_err(|e| format!("ERR {e}"))?;
        }
        self.users.insert(name.to_string(), user);
        Ok(())
    }

    /// `ACL DELUSER`: how many of `names` existed. The default user cannot be deleted.
    pub fn delete(&mut self, names: &[&str]) -> Result<usize, String> {
        if names.contains(&DEFAULT_USER) {
            return Err("ERR The 'default' user cannot be removed".into());
        }
        Ok(names.iter().filter(|n| self.users.remove(**n).is_some()).count())
    }

    /// `AUTH user pass`: the user, if the password is its and it is on.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<User> {
        self.users.get(name).filter(|u| u.accepts(password)).cloned()
    }

    /// Whether a connection must authenticate first: the default user is off or has a
    /// password.
    pub fn auth_required(&self) -> bool {
        self.users.get(DEFAULT_USER).is_none_or(|u| !u.enabled || !u.nopass)
    }
}

/// The node's users, read by every core. A change replaces the table and moves the
/// generation; readers compare generations (an atomic load) and take the lock only then.
#[derive(Debug)]
pub struct Registry {
    table: RwLock<Arc<Users>>,
    generation: AtomicU64,
    /// `--requirepass`: the default user's password on this node, whatever the stored
    /// table says.
    requirepass: Option<String>,
    /// Connections authenticated as each user (touched at AUTH and at close only).
    sessions: Arc<Sessions>,
    /// `--max-connections-per-user` (0: no cap).
    per_user_max: u64,
}

impl Registry {
    pub fn new(users: Users, requirepass: Option<String>) -> Registry {
        Registry::with_cap(users, requirepass, 0)
    }

    /// A registry whose users may hold at most `per_user_max` connections each (0: any).
    pub fn with_cap(users: Users, requirepass: Option<String>, per_user_max: u64) -> Registry {
        let r = Registry {
            table: RwLock::new(Arc::new(Users::default())),
            generation: AtomicU64::new(0),
            requirepass,
            sessions: Default::default(),
            per_user_max,
        };
        r.replace(users);
        r
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arc<Users> {
        self.table.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publishes `users` (with `--requirepass` over the default user) if it differs.
    pub fn replace(&self, mut users: Users) {
        if let Some(pass) = &self.requirepass {
            let d =
                users.users.entry(DEFAULT_USER.into()).or_insert_with(|| User::default_user(None));
            d.nopass = false;
            d.secrets = vec![digest(pass.as_bytes())];
        }
        users.users.entry(DEFAULT_USER.into()).or_insert_with(|| User::default_user(None));
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if **table != users {
            *table = Arc::new(users);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Connections authenticated as each user.
type Sessions = Mutex<HashMap<String, u64>>;

/// What `AUTH` came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Accepted,
    /// Wrong user or password, or the user is off.
    Refused,
    /// The user holds `--max-connections-per-user` connections already.
    TooMany(u64),
}

/// A connection's principal: who it is, as of which registry generation.
#[derive(Debug)]
pub struct Principal {
    /// `None` until the connection authenticates, when the default user needs a password.
    pub user: Option<Arc<User>>,
    pub name: String,
    seen: u64,
    /// The user this connection counts against, since it authenticated.
    counted: Option<(String, Arc<Sessions>)>,
}

impl Drop for Principal {
    fn drop(&mut self) {
        if let Some((name, sessions)) = self.counted.take() {
            leave(&sessions, &name);
        }
    }
}

fn leave(sessions: &Sessions, name: &str) {
    let mut s = sessions.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = s.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            s.remove(name);
        }
    }
}

impl Principal {
    /// A new connection: the default user when it needs no password, else nobody yet.
    pub fn connect(registry: &Registry) -> Principal {
        let seen = registry.generation();
        let users = registry.get();
        let user = match users.auth_required() {
            true => None,
            false => users.users.get(DEFAULT_USER).cloned().map(Arc::new),
        };
        Principal { user, name: DEFAULT_USER.into(), seen, counted: None }
    }

    /// `AUTH`: becomes `name` when the password is right and the user may hold another
    /// connection.
    pub fn authenticate(&mut self, registry: &Registry, name: &str, password: &[u8]) -> Login {
        let seen = registry.generation();
        let Some(user) = registry.get().verify(name, password) else { return Login::Refused };
        if self.counted.as_ref().is_none_or(|(counted, _)| counted != name) {
            let mut sessions = registry.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let held = sessions.entry(name.to_string()).or_insert(0);
            if registry.per_user_max > 0 && *held >= registry.per_user_max {
                return Login::TooMany(registry.per_user_max);
            }
            *held += 1;
            drop(sessions);
            if let Some((old, sessions)) = self.counted.take() {
                leave(&sessions, &old);
            }
            self.counted = Some((name.to_string(), registry.sessions.clone()));
        }
        (self.user, self.name, self.seen) = (Some(Arc::new(user)), name.into(), seen);
        Login::Accepted
    }

    /// The user now: a changed one is read again, a deleted or disabled one is gone.
    pub fn user(&mut self, registry: &Registry) -> Result<&User, Denied> {
        let now = registry.generation();
        if now != self.seen {
            self.seen = now;
            let users = registry.get();
            if self.user.is_some() || !users.auth_required() {
                let current = users.users.get(&self.name).filter(|u| u.enabled);
                self.user = current.cloned().map(Arc::new);
            }
        }
        self.user.as_deref().ok_or(Denied::NoAuth)
    }

    /// Checks `op` for this connection.
    pub fn check(&mut self, registry: &Registry, op: &Op) -> Result<(), Denied> {
        self.user(registry)?.check(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn set(users: &mut Users, name: &str, rules: &str) {
        users.set_user(name, &rules.split_whitespace().collect::<Vec<_>>()).unwrap();
    }

    #[test]
    fn passwords_and_states() {
        let mut users = Users::with_default(None);
        assert!(!users.auth_required());
        set(&mut users, "ann", "on >secret ~* +@all");
        assert!(users.verify("ann", b"secret").is_some());
        assert!(users.verify("ann", b"wrong").is_none());
        set(&mut users, "ann", ">second");
        assert!(
            users.verify("ann", b"secret").is_some() && users.verify("ann", b"second").is_some()
        );
        set(&mut users, "ann", "<secret off");
        assert!(users.verify("ann", b"second").is_none(), "off");
        let with = Users::with_default(Some("pw"));
        assert!(with.auth_required());
        assert!(with.verify(DEFAULT_USER, b"pw").is_some());
        assert!(users.set_user("bob", &["bogus"]).unwrap_err().contains("Syntax error"));
        assert!(!users.users.contains_key("bob"), "nothing changes on a bad rule");
        assert!(users.delete(&["default"]).is_err());
        assert_eq!(users.delete(&["ann", "nobody"]), Ok(1));
        let back = Users::decode(&with.encode()).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn permissions_by_category_and_key() {
        let mut users = Users::default();
        set(&mut users, "ro", "on nopass ~* +@read");
        set(&mut users, "app", "on nopass ~app:* %R~shared:* +@read +@write");
        let (ro, app) = (&users.users["ro"], &users.users["app"]);
        let get = |k: &str| Op::Get { key: Bytes::from(k.to_string()) };
        let put = |k: &str| Op::set(k.to_string(), "v");
        assert!(ro.check(&get("x")).is_ok());
        assert!(matches!(ro.check(&put("x")), Err(Denied::NoPerm(m)) if m.contains("@write")));
        assert!(app.check(&put("app:1")).is_ok());
        assert!(app.check(&get("shared:1")).is_ok());
        assert!(
            matches!(app.check(&put("shared:1")), Err(Denied::NoPerm(m)) if m.contains("shared:1"))
        );
        assert!(app.check(&get("other")).is_err());
        // A batch is checked key by key.
        assert!(app.check(&Op::Batch(vec![put("app:2"), get("shared:2")])).is_ok());
        assert!(app.check(&Op::Batch(vec![put("app:2"), put("other")])).is_err());
        assert!(app.check(&Op::Checkpoint).is_err());
        assert!(!app.reads_every_key() && ro.reads_every_key());
        assert!(users.users["app"].describe().contains("~app:* %R~shared:* -@all +@read +@write"));
    }

    #[test]
    fn a_principal_follows_changes_to_its_user() {
        let registry = Registry::new(Users::with_default(None), Some("pw".into()));
        let mut p = Principal::connect(&registry);
        let op = Op::Get { key: Bytes::from_static(b"k") };
        assert_eq!(p.check(&registry, &op), Err(Denied::NoAuth), "requirepass holds");
        assert_eq!(p.authenticate(&registry, DEFAULT_USER, b"nope"), Login::Refused);
        assert_eq!(p.authenticate(&registry, DEFAULT_USER, b"pw"), Login::Accepted);
        assert!(p.check(&registry, &op).is_ok());
        let mut users = (*registry.get()).clone();
        set(&mut users, "default", "-@read");
        registry.replace(users.clone());
        assert!(matches!(p.check(&registry, &op), Err(Denied::NoPerm(_))), "changed at once");
        set(&mut users, "default", "off");
        registry.replace(users);
        assert_eq!(p.check(&registry, &op), Err(Denied::NoAuth), "a disabled user is gone");
    }

    #[test]
    fn a_user_holds_at_most_its_cap_of_connections() {
        let mut users = Users::with_default(None);
        set(&mut users, "app", "on >pw ~* +@all");
        let registry = Registry::with_cap(users, None, 2);
        let mut held: Vec<Principal> = (0..2).map(|_| Principal::connect(&registry)).collect();
        for p in &mut held {
            assert_eq!(p.authenticate(&registry, "app", b"pw"), Login::Accepted);
        }
        let mut third = Principal::connect(&registry);
        assert_eq!(third.authenticate(&registry, "app", b"pw"), Login::TooMany(2));
        // Authenticating again as the same user takes no second place.
        assert_eq!(held[0].authenticate(&registry, "app", b"pw"), Login::Accepted);
        held.pop();
        assert_eq!(third.authenticate(&registry, "app", b"pw"), Login::Accepted);
        assert_eq!(third.authenticate(&registry, DEFAULT_USER, b"x"), Login::Accepted);
        let mut fourth = Principal::connect(&registry);
        assert_eq!(fourth.authenticate(&registry, "app", b"pw"), Login::Accepted, "third moved");
    }
}
