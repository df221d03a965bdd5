//! The node's socket hub: which sockets listen to which topic, and delivery of live frames to them.
//!
//! Each socket registers a bounded queue. Publishing never waits: a socket whose queue is full is
//! a slow consumer and is cut off (its `kill` is notified and it is unregistered everywhere); it
//! reconnects and resumes from the store, which is the truth. So the hub may drop, never block.

use parley_core::{ConversationId, DepartmentId, TenantId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};

/// What a frame is about. Every topic names its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Conversation(TenantId, ConversationId),
    Agent(TenantId, UserId),
    Department(TenantId, DepartmentId),
}

/// A frame ready to send: JSON text, serialised once however many sockets get it.
pub type Frame = Arc<str>;

/// One registered socket.
#[derive(Clone)]
pub struct Subscriber {
    pub id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub kill: Arc<Notify>,
}

#[derive(Default)]
pub struct Hub {
    topics: Mutex<HashMap<Topic, HashMap<u64, Subscriber>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Hub({} topics)",
            self.topics.lock().map(|t| t.len()).unwrap_or(0)
        )
    }
}

impl Hub {
    /// A new subscriber with a queue of `capacity` frames, and the receiving end for its socket.
    pub fn new_subscriber(&self, capacity: usize) -> (Subscriber, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (
            Subscriber {
                id,
                tx,
                kill: Arc::new(Notify::new()),
            },
            rx,
        )
    }

    pub fn subscribe(&self, topic: Topic, s: &Subscriber) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.entry(topic).or_default().insert(s.id, s.clone());
    }

    pub fn unsubscribe(&self, topic: Topic, id: u64) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = topics.get_mut(&topic) {
            subs.remove(&id);
            if subs.is_empty() {
                topics.remove(&topic);
            }
        }
    }

    /// Forget a socket everywhere (on disconnect).
    pub fn unsubscribe_all(&self, id: u64) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.retain(|_, subs| {
            subs.remove(&id);
            !subs.is_empty()
        });
    }

    /// Deliver `frame` to every socket on `topic`, without waiting.
    pub fn publish(&self, topic: Topic, frame: Frame) {
        let mut slow = vec![];
        {
            let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let Some(subs) = topics.get(&topic) else {
                return;
            };
            for s in subs.values() {
                match s.tx.try_send(frame.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => slow.push(s.clone()),
                    Err(mpsc::error::TrySendError::Closed(_)) => slow.push(s.clone()),
                }
            }
        }
        for s in slow {
            s.kill.notify_one();
            self.unsubscribe_all(s.id);
        }
    }

    pub fn subscriber_count(&self, topic: Topic) -> usize {
        self.topics
            .lock()
            .map(|t| t.get(&topic).map_or(0, |s| s.len()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::Agent(
            TenantId::from_uuid(uuid::Uuid::from_u128(1)),
            UserId::from_uuid(uuid::Uuid::from_u128(2)),
        )
    }

    #[tokio::test]
    async fn delivers_and_cuts_off_slow_consumers() {
        let hub = Hub::default();
        let (fast, mut fast_rx) = hub.new_subscriber(8);
        let (slow, _slow_rx) = hub.new_subscriber(1);
        hub.subscribe(topic(), &fast);
        hub.subscribe(topic(), &slow);
        hub.publish(topic(), Arc::from("a"));
        hub.publish(topic(), Arc::from("b"));
        assert_eq!(&*fast_rx.recv().await.unwrap(), "a");
        assert_eq!(&*fast_rx.recv().await.unwrap(), "b");
        // The slow one overflowed on "b": it was told to go, and is gone.
        tokio::time::timeout(std::time::Duration::from_secs(1), slow.kill.notified())
            .await
            .unwrap();
        assert_eq!(hub.subscriber_count(topic()), 1);
        hub.unsubscribe_all(fast.id);
        assert_eq!(hub.subscriber_count(topic()), 0);
    }
}
