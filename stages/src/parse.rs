//! The request parsing stage: frames → typed, validated requests.
//!
//! Check, then parse: the intake already bounded the frame's size; here the kind is checked
//! (unknown → `UnknownMessageType`), the body decoded exactly (trailing bytes are an error), and
//! the request validated against the node's limits (key and value sizes, context bound) before
//! anything reaches coordination. Every failure is answered with a typed error on the same
//! connection, which stays open: a bad request is the client's problem, not the stream's.
//!
//! `Stats` requests never reach this stage: the intake answers them itself, so an operator can
//! inspect a node whose pipeline is full.

use crate::coordinate::{ClientRequest, CoordinateEvent, OperationLatencies, Origin};
use crate::error::ServiceError;
use crate::intake::{ConnId, IntakeEvent};
use crate::seda::{SendError, Stage, StageSender, StageSnapshot};
use crate::wire::{ContextSeal, Frame, Message, StatsReply};
use crate::NodeId;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A frame read from a client.
#[derive(Debug)]
pub struct ParseEvent {
    /// The connection it arrived on.
    pub conn: ConnId,
    /// The frame.
    pub frame: Frame,
    /// When the intake read it.
    pub received_at: Instant,
}

impl fmt::Display for ParseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from conn {}", self.frame, self.conn)
    }
}

/// Request limits enforced by parsing.
#[derive(Clone, Debug)]
pub struct ParseSettings {
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Checks that contexts were produced by this cluster.
    pub seal: ContextSeal,
}

/// Reads the live statistics of every stage of the node.
pub type StageProbe = Arc<dyn Fn() -> StageSnapshot + Send + Sync>;

/// What a stats reply is assembled from.
#[derive(Clone)]
pub struct StatsSource {
    /// This node.
    pub node: NodeId,
    /// One probe per stage, in pipeline order.
    pub stages: Vec<StageProbe>,
    /// Client operation latencies.
    pub latencies: OperationLatencies,
}

impl StatsSource {
    /// The node's statistics now.
    pub fn snapshot(&self) -> StatsReply {
        StatsReply {
            node: self.node.clone(),
            stages: self.stages.iter().map(|probe| probe()).collect(),
            operations: self.latencies.snapshot(),
        }
    }
}

/// One parse worker.
pub struct ParseStage {
    settings: ParseSettings,
    coordinate: StageSender<CoordinateEvent>,
    intake: StageSender<IntakeEvent>,
}

impl ParseStage {
    /// A worker feeding `coordinate` and answering errors through `intake`.
    pub fn new(
        settings: ParseSettings,
        coordinate: StageSender<CoordinateEvent>,
        intake: StageSender<IntakeEvent>,
    ) -> ParseStage {
        ParseStage {
            settings,
            coordinate,
            intake,
        }
    }

    fn handle(&self, event: ParseEvent) {
        let origin = Origin {
            conn: event.conn,
            request_id: event.frame.request_id,
        };
        let message = match Message::decode(&event.frame) {
            Ok(message) => message,
            Err(error) => return self.reply(origin, Message::Error(error.into())),
        };

        let request = match validate(&self.settings, message) {
            Ok(request) => request,
            Err(error) => return self.reply(origin, Message::Error(error)),
        };
        let event = CoordinateEvent::Client {
            origin,
            request,
            received_at: event.received_at,
        };
        if let Err(refused) = self.coordinate.try_send(event) {
            let error = match refused {
                SendError::Full(_) => ServiceError::Overloaded {
                    stage: "coordinate".into(),
                },
                SendError::Closed(_) => ServiceError::ShuttingDown,
            };
            self.reply(origin, Message::Error(error));
        }
    }

    fn reply(&self, origin: Origin, message: Message) {
        // The intake stops first at shutdown; a reply after that has no socket to go to.
        let _ = self.intake.send(IntakeEvent::reply(origin, &message));
    }
}

impl Stage for ParseStage {
    type Event = ParseEvent;

    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<ParseEvent>) {
        for event in batch.drain(..) {
            self.handle(event);
        }
    }
}

/// Turns a decoded message into a request the coordinator can act on, or the error that says
/// why not. Pure, so it is tested directly.
pub fn validate(settings: &ParseSettings, message: Message) -> Result<ClientRequest, ServiceError> {
    let timeout = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
    match message {
        Message::Get(get) => {
            check_key(settings, &get.key)?;
            Ok(ClientRequest::Get {
                key: get.key.into_vec(),
                r: get.r.map(usize::from),
                timeout: timeout(get.timeout_ms),
            })
        }
        Message::Put(put) => {
            check_key(settings, &put.key)?;
            if put.value.len() > settings.max_value_bytes {
                return Err(ServiceError::ValueTooLarge {
                    size: put.value.len() as u64,
                    max: settings.max_value_bytes as u64,
                });
            }
            let context = match &put.context {
                Some(bytes) => settings.seal.decode(bytes)?,
                None => Default::default(),
            };
            Ok(ClientRequest::Put {
                key: put.key.into_vec(),
                context,
                value: Some(put.value.into_vec()),
                w: put.w.map(usize::from),
                timeout: timeout(put.timeout_ms),
            })
        }
        Message::Delete(delete) => {
            check_key(settings, &delete.key)?;
            Ok(ClientRequest::Put {
                key: delete.key.into_vec(),
                context: settings.seal.decode(&delete.context)?,
                value: None,
                w: delete.w.map(usize::from),
                timeout: timeout(delete.timeout_ms),
            })
        }
        other => Err(ServiceError::NotARequest { kind: other.kind() }),
    }
}

fn check_key(settings: &ParseSettings, key: &[u8]) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > settings.max_key_bytes {
        return Err(ServiceError::InvalidKey {
            size: key.len() as u64,
            max: settings.max_key_bytes as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::VClock;
    use crate::wire::{Bytes, DeleteRequest, GetRequest, PutReply, PutRequest};

    fn settings() -> ParseSettings {
        ParseSettings {
            max_key_bytes: 8,
            max_value_bytes: 16,
            seal: ContextSeal::new(b"parse-tests-secret-0123"),
        }
    }

    fn put(key: &[u8], value: &[u8], context: Option<Vec<u8>>) -> Message {
        Message::Put(PutRequest {
            key: Bytes::from(key.to_vec()),
            context: context.map(Bytes::from),
            value: Bytes::from(value.to_vec()),
            w: Some(2),
            timeout_ms: Some(250),
        })
    }

    /// Goal: limits are enforced exactly at their bounds, with errors that carry the numbers.
    #[test]
    fn key_and_value_limits_are_exact() {
        let s = settings();
        assert!(validate(&s, put(&[1; 8], &[1; 16], None)).is_ok());
        assert_eq!(
            validate(&s, put(&[1; 9], b"v", None)),
            Err(ServiceError::InvalidKey { size: 9, max: 8 })
        );
        assert_eq!(
            validate(&s, put(b"", b"v", None)),
            Err(ServiceError::InvalidKey { size: 0, max: 8 })
        );
        assert_eq!(
            validate(&s, put(b"k", &[1; 17], None)),
            Err(ServiceError::ValueTooLarge { size: 17, max: 16 })
        );
    }

    /// Goal: a valid put carries its decoded context, quorum and deadline to the coordinator;
    /// a delete becomes a put of a tombstone.
    #[test]
    fn valid_requests_become_typed_client_requests() {
        let s = settings();
        let clock = VClock::new().with_entry("n1", 2, 5);
        let sealed = s.seal.encode(&clock);
        let request = validate(&s, put(b"k", b"v", Some(sealed.clone()))).expect("valid");
        assert_eq!(
            request,
            ClientRequest::Put {
                key: b"k".to_vec(),
                context: clock.clone(),
                value: Some(b"v".to_vec()),
                w: Some(2),
                timeout: Some(Duration::from_millis(250)),
            }
        );
        let delete = Message::Delete(DeleteRequest {
            key: Bytes::from(b"k".to_vec()),
            context: Bytes::from(sealed),
            w: None,
            timeout_ms: None,
        });
        assert!(matches!(
            validate(&s, delete),
            Ok(ClientRequest::Put { value: None, .. })
        ));
        let get = Message::Get(GetRequest {
            key: Bytes::from(b"k".to_vec()),
            r: Some(1),
            timeout_ms: None,
        });
        assert!(matches!(
            validate(&s, get),
            Ok(ClientRequest::Get { r: Some(1), .. })
        ));
    }

    /// Goal: replies sent as requests and forged contexts are refused with their own errors.
    #[test]
    fn replies_and_forged_contexts_are_refused() {
        let s = settings();
        let reply = Message::PutReply(PutReply {
            context: Bytes::from(vec![]),
        });
        assert_eq!(
            validate(&s, reply),
            Err(ServiceError::NotARequest {
                kind: crate::wire::kind::PUT_REPLY
            })
        );
        let foreign = ContextSeal::new(b"some-other-cluster-secret")
            .encode(&VClock::new().with_entry("n1", 9, 1));
        assert!(matches!(
            validate(&s, put(b"k", b"v", Some(foreign))),
            Err(ServiceError::BadContext { .. })
        ));
    }
}
