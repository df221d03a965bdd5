//! The routing policy: which eligible agent gets the next chat. Pure: the store supplies the
//! candidates and applies the choice atomically.

use crate::{ConversationId, Timestamp, UserId};

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

/// One routing round: the agent for each waiting chat, oldest first, as `choose_agent` would
/// pick them one after another, counting every chat given out in this round as the agent's load
/// (and as their last assignment, at `now`). Stops when no agent has room. A chat every free
/// agent has declined is left waiting. The store still checks each assignment when it applies it.
pub fn plan_round(
    candidates: &[Candidate],
    queue: &[(ConversationId, &[UserId])],
    now: Timestamp,
) -> Vec<(ConversationId, UserId)> {
    let mut agents = candidates.to_vec();
    let mut plan = vec![];
    for (conversation, declined) in queue {
        if agents.iter().all(|a| a.active_chats >= a.capacity) {
            break;
        }
        let Some(agent) = choose_agent(&agents, declined) else {
            continue;
        };
        if let Some(a) = agents.iter_mut().find(|a| a.agent == agent) {
            a.active_chats += 1;
            a.idle_since = now;
        }
        plan.push((*conversation, agent));
    }
    plan
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

    #[test]
    fn a_round_spreads_chats_as_one_by_one_choices_would() {
        let conv = |n: u128| ConversationId::from_uuid(uuid::Uuid::from_u128(n));
        let agents = [c(1, 2, 0, 0), c(2, 3, 0, 10)];
        let (a, b) = (agents[0].agent, agents[1].agent);
        let queue: Vec<(ConversationId, &[UserId])> = (1..=7).map(|n| (conv(n), &[][..])).collect();
        let plan = plan_round(&agents, &queue, Timestamp(100));
        // b has most room (3); then 2 each and a was idle longer; then b has more room (2 to
        // 1); then 1 each, both last given a chat now: the lowest id; then b's last slot.
        assert_eq!(
            plan,
            vec![
                (conv(1), b),
                (conv(2), a),
                (conv(3), b),
                (conv(4), a),
                (conv(5), b)
            ],
        );
        assert_eq!(plan.len(), 5, "five free slots, seven chats: two wait");

        let declined = [b];
        let queue = [(conv(1), &declined[..]), (conv(2), &[][..])];
        let full_a = [c(1, 1, 1, 0), c(2, 1, 0, 0)];
        assert_eq!(
            plan_round(&full_a, &queue, Timestamp(1)),
            vec![(conv(2), b)],
            "a chat only a declined agent could take waits; the next one is served"
        );
        assert!(plan_round(&[c(1, 1, 1, 0)], &queue, Timestamp(1)).is_empty());
    }
}
