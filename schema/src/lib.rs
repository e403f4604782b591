//! The corekv wire protocol, shared by the node, the client SDK and the load generator.
//!
//! `corekv.fbs` is the source of truth; `generated/` is `flatc` output (committed, rebuilt by
//! `regen.sh`) and is never edited by hand. On top of it this crate owns:
//!
//! - [`frame`]: the `u32-LE length | FlatBuffers` framing and the size limits checked before any
//!   allocation is sized by a length prefix;
//! - [`peer`]: node-to-node frames (`peer.fbs`): a link's hello and batches of Raft messages;
//! - [`codec`]: the typed vocabulary (`Request`, `Op`, `Response`, `Reply`, `ErrorCode`) and its
//!   encoding to and verified decoding from FlatBuffers.
//!
//! Decoding is zero-copy: keys and values in a decoded request are `Bytes` slices of the frame.

pub mod codec;
pub mod frame;
pub mod peer;
pub mod placement;
pub mod resp;
pub mod ring;

#[allow(clippy::all, unused_imports, dead_code, mismatched_lifetime_syntaxes)]
// Generated accessors read verified buffers through unchecked offsets; flatc owns that code.
#[allow(unsafe_code)]
#[rustfmt::skip]
pub mod generated {
    //! `flatc --rust` output for `corekv.fbs`. Do not edit; run `schema/regen.sh`.
    include!("generated/corekv_generated.rs");
}

#[allow(clippy::all, unused_imports, dead_code, mismatched_lifetime_syntaxes)]
#[allow(unsafe_code)]
#[rustfmt::skip]
pub mod generated_peer {
    //! `flatc --rust` output for `peer.fbs` (its own module: each file declares `corekv`).
    include!("generated/peer_generated.rs");
}

pub use generated::corekv::wire;
