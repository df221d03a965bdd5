//! The routing policy: which eligible agent gets the next chat. Pure: the store supplies the
//! candidates and applies the choice atomically.

use crate::{Timestamp, UserId};

/// An agent who could take a chat of the department right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub agent: UserId,
    pub capacity: i64,
    pub active_chats: i64,
    /// When the agent last got a chat (or came online): the longer ago, the sooner they get one.
    pub idle_since: Timestamp,
}

/// The agent with the most free capacity; ties go to the one idle longest, then to the lowest
/// id (so the choice is deterministic). Agents at capacity and those in `exclude` (who rejected
/// or let the offer time out) are never chosen.
pub fn choose_agent(candidates: &[Candidate], exclude: &[UserId]) -> Option<UserId> {
    candidates
        .iter()
        .filter(|c| c.active_chats < c.capacity && !exclude.contains(&c.agent))
        .min_by(|a, b| {
            (b.capacity - b.active_chats)
                .cmp(&(a.capacity - a.active_chats))
                .then(a.idle_since.cmp(&b.idle_since))
                .then(a.agent.cmp(&b.agent))
        })
        .map(|c| c.agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u128, capacity: i64, active: i64, idle: i64) -> Candidate {
        Candidate {
            agent: UserId::from_uuid(uuid::Uuid::from_u128(n)),
            capacity,
            active_chats: active,
            idle_since: Timestamp(idle),
        }
    }

    #[test]
    fn most_free_capacity_then_longest_idle() {
        let agents = [c(1, 3, 2, 0), c(2, 5, 2, 50), c(3, 5, 2, 10)];
        assert_eq!(
            choose_agent(&agents, &[]),
            Some(agents[2].agent),
            "3 free each: longest idle"
        );
        assert_eq!(
            choose_agent(&agents, &[agents[2].agent]),
            Some(agents[1].agent)
        );
        assert_eq!(choose_agent(&[c(1, 2, 2, 0)], &[]), None, "full");
        assert_eq!(choose_agent(&[], &[]), None);
        let tie = [c(9, 2, 0, 5), c(4, 2, 0, 5)];
        assert_eq!(
            choose_agent(&tie, &[]),
            Some(tie[1].agent),
            "full tie: lowest id"
        );
    }
}
