//! Incoming links from other nodes of the cluster: the `Hello` check, then Raft traffic to
//! the cores that own its partitions, forwarded client requests run here and answered on
//! the same link, and peers' health reports. The outgoing side is `cluster::transport`.
//!
//! With peer TLS the accept loop has already checked the certificate against the cluster's
//! CA; the `Hello` must then name a node the certificate names, and carry this cluster's id.

use std::rc::Rc;

use bytes::BytesMut;
use corekv_schema::codec::{Reply, decode_request};
use corekv_schema::frame::take_frame;
use corekv_schema::peer::{self, JoinInfo, PEER_VERSION, PeerMessage};
use futures_lite::future;
use glommio::channels::local_channel;

use crate::cluster::command::with_encoder;
use crate::cluster::meta::encode_map;
use crate::cluster::plan::{Member, Standing, encode_members};
use crate::cluster::transport::{
    LINK_QUEUE_FRAMES, SnapshotAssembly, incoming_frame_bytes_max, read_some,
};
use crate::shard::{Core, Origin};
use crate::shutdown::Shutdown;
use crate::tls::{Stream, names_node, send_all};

/// Serves one incoming link from another node.
pub async fn serve(core: Rc<Core>, stream: Stream, shutdown: Rc<Shutdown>) {
    let Some(replicas) = core.cluster.as_ref() else { return };
    let certificate = stream.peer_certificate();
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded::<Vec<u8>>(LINK_QUEUE_FRAMES);
    let writing = glommio::spawn_local(async move {
        while let Some(frame) = rx.recv().await {
            if send_all(&mut writer, &frame).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut greeted = false;
    let mut greeted_by = 0;
    let mut snapshots = SnapshotAssembly::default();
    let tx = Rc::new(tx);
    let frame_max = incoming_frame_bytes_max(&core.limits);
    'read: loop {
        loop {
            let frame = match take_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "peer frame refused; closing the link");
                    break 'read;
                }
            };
            let message = match peer::decode(&frame) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "bad peer frame; closing the link");
                    break 'read;
                }
            };
            match message {
                PeerMessage::Hello { to_node, version, from_node, cluster_id } => {
                    if to_node != replicas.node || version != PEER_VERSION {
                        tracing::warn!(
                            from_node,
                            to_node,
                            version,
                            "link hello for another node or version; closing"
                        );
                        break 'read;
                    }
                    if cluster_id != replicas.config.cluster_id {
                        let ours = replicas.config.cluster_id;
                        tracing::warn!(from_node, cluster_id, ours, "link from another cluster");
                        break 'read;
                    }
                    if let Some(cert) = &certificate
                        && !names_node(cert, from_node)
                    {
                        tracing::warn!(
                            from_node,
                            "link refused: the certificate does not name node-{from_node}"
                        );
                        break 'read;
                    }
                    greeted = true;
                    greeted_by = from_node;
                }
                PeerMessage::JoinAsk { from_node }
                    if certificate.as_ref().is_some_and(|c| !names_node(c, from_node)) =>
                {
                    tracing::warn!(from_node, "join refused: the certificate names another node");
                    break 'read;
                }
                PeerMessage::JoinAsk { from_node } if !greeted => {
                    tracing::info!(from_node, "a joining node asked for the members and map");
                    let _ = tx.send(peer::encode(&PeerMessage::JoinInfo(join_info(&core)))).await;
                    break 'read;
                }
                _ if !greeted => break 'read,
                PeerMessage::Raft { messages, .. } => core.deliver_raft(messages).await,
                PeerMessage::SnapshotChunk(piece) => match snapshots.take(piece) {
                    Ok(Some(whole)) => core.deliver_raft(vec![whole]).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(from = greeted_by, error = %e, "snapshot piece refused")
                    }
                },
                PeerMessage::Forward { id, .. } if core.node.view.get().removed(greeted_by) => {
                    let why = format!("node {greeted_by} was removed from the cluster");
                    let reply = Reply::error(corekv_schema::codec::ErrorCode::Unavailable, why);
                    let mut response = BytesMut::new();
                    with_encoder(|e| e.response(id, &reply, &mut response));
                    let frame =
                        peer::encode(&PeerMessage::Forwarded { id, response: response.freeze() });
                    let _ = tx.send(frame).await;
                }
                PeerMessage::Forward { id, request } => {
                    let (core, tx) = (core.clone(), tx.clone());
                    glommio::spawn_local(async move {
                        let reply = match decode_request(&request, &core.limits) {
                            Ok(r) => core.cluster_op(r.op, r.consistency, Origin::Peer).await,
                            Err(e) => Reply::error(e.code, e.message),
                        };
                        let mut response = BytesMut::new();
                        with_encoder(|e| e.response(id, &reply, &mut response));
                        let frame = peer::encode(&PeerMessage::Forwarded {
                            id,
                            response: response.freeze(),
                        });
                        let _ = tx.send(frame).await;
                    })
                    .detach();
                }
                PeerMessage::Forwarded { .. }
                | PeerMessage::JoinAsk { .. }
                | PeerMessage::JoinInfo(_) => {}
                PeerMessage::Report(report) if report.from_node == greeted_by => {
                    core.node.peers.record(report);
                }
                PeerMessage::Report(report) => {
                    tracing::warn!(from = report.from_node, greeted_by, "report for another node");
                }
            }
        }
        let n = future::or(read_some(&mut reader, &mut buf), async {
            shutdown.wait().await;
            0
        })
        .await;
        if n == 0 {
            break;
        }
    }
    drop(tx);
    // Let an answer queued just before closing (a join's) go out.
    let mut writing = writing;
    let _ = futures_lite::future::or(&mut writing, async {
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
    })
    .await;
    writing.cancel().await;
}

/// What a joining node needs: the members and map as this node last read them (before its
/// first reading, the founders and the ring's map).
fn join_info(core: &Core) -> JoinInfo {
    let seen = core.node.view.get();
    let r = core.cluster.as_ref().expect("cluster mode");
    let members = if seen.members.is_empty() {
        let founders = r.config.nodes.iter().map(|&(id, addr)| Member {
            id,
            addr,
            standing: Standing::Active,
        });
        founders.collect()
    } else {
        seen.members
    };
    let map = if seen.map.is_empty() { r.map() } else { seen.map };
    JoinInfo {
        members: encode_members(&members),
        map: encode_map(&map),
        map_version: seen.map_version,
        partitions: core.partitions,
        replication_factor: r.config.replication_factor as u32,
        cluster_id: r.config.cluster_id,
    }
}
