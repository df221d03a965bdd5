//! Conversations: an append-only log of events numbered 1, 2, 3… within the conversation.
//! Everything a screen shows is a projection of these events. Typing and presence are signals,
//! never stored.

use crate::{DomainError, UserId};
use serde::{Deserialize, Serialize};

/// Where a conversation stands. Offers are a routing detail of a queued conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    /// Waiting for an agent (possibly offered to one right now).
    Queued,
    /// An agent has it.
    Assigned,
    /// Over; nothing more can be appended but the visitor's survey.
    Ended,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Queued => "queued",
            ConversationStatus::Assigned => "assigned",
            ConversationStatus::Ended => "ended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Assigned, Self::Ended]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// What an event records. Stored by name; the names are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The visitor started the chat (the pre-chat answers are on the conversation, encrypted).
    Started,
    /// An agent took the chat.
    Assigned,
    /// A chat message from the visitor or an agent.
    Message,
    /// The chat moved to another agent or department, with an optional note for the next agent.
    Transferred,
    /// The chat went back to the queue (its agent went offline or rejected it).
    Requeued,
    /// The chat ended.
    Ended,
    /// The visitor's connection became weak, was lost, or was restored (`data.state`).
    Connection,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Assigned => "assigned",
            EventKind::Message => "message",
            EventKind::Transferred => "transferred",
            EventKind::Requeued => "requeued",
            EventKind::Ended => "ended",
            EventKind::Connection => "connection",
        }
    }
    /// Every kind; `parse` and the tests go through this list, so a new kind cannot be forgotten.
    pub const ALL: [EventKind; 7] = [
        Self::Started,
        Self::Assigned,
        Self::Message,
        Self::Transferred,
        Self::Requeued,
        Self::Ended,
        Self::Connection,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Who wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    Visitor,
    Agent(UserId),
    System,
}

impl Author {
    pub fn to_stored(self) -> String {
        match self {
            Author::Visitor => "visitor".into(),
            Author::Agent(id) => format!("agent:{id}"),
            Author::System => "system".into(),
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "visitor" => Some(Author::Visitor),
            "system" => Some(Author::System),
            other => other
                .strip_prefix("agent:")
                .and_then(|id| id.parse().ok())
                .map(Author::Agent),
        }
    }
}

/// A chat message's text: 1 to 4,000 characters after trimming, no control characters but line
/// breaks and tabs. Personal data: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    pub const MAX_CHARS: usize = 4000;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(DomainError::new("body", "required", "must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(DomainError::new(
                "body",
                "too_long",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(DomainError::new(
                "body",
                "invalid_characters",
                "must not contain control characters",
            ));
        }
        Ok(MessageBody(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageBody([personal data])")
    }
}

/// A client-chosen idempotency key for a message: 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.is_empty()
            || raw.len() > 64
            || !raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DomainError::new(
                "client_msg_id",
                "invalid_client_msg_id",
                "use 1 to 64 letters, digits, - or _",
            ));
        }
        Ok(ClientMsgId(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the visitor's connection looks from the server: heartbeats arrive, have stopped for a
/// while (weak), or for longer (lost). A lost visitor who stays away past the tenant's timeout
/// has their chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitorConnection {
    Connected,
    Weak,
    Lost,
}

impl VisitorConnection {
    pub fn as_str(self) -> &'static str {
        match self {
            VisitorConnection::Connected => "connected",
            VisitorConnection::Weak => "weak",
            VisitorConnection::Lost => "lost",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Connected, Self::Weak, Self::Lost]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A tenant's connection periods, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionPeriods {
    pub weak_after_ms: i64,
    pub lost_after_ms: i64,
    pub timeout_ms: i64,
}

impl ConnectionPeriods {
    /// What a visitor silent since `seen` should be at `now`: `None` means their chat should end.
    pub fn state_at(
        &self,
        seen: crate::Timestamp,
        now: crate::Timestamp,
    ) -> Option<VisitorConnection> {
        let silent = now.0 - seen.0;
        if silent >= self.lost_after_ms + self.timeout_ms {
            None
        } else if silent >= self.lost_after_ms {
            Some(VisitorConnection::Lost)
        } else if silent >= self.weak_after_ms {
            Some(VisitorConnection::Weak)
        } else {
            Some(VisitorConnection::Connected)
        }
    }

    /// Periods must be positive and in order (weak before lost), and at most a day each.
    pub fn validate(&self) -> Result<(), DomainError> {
        let day = 24 * 3600 * 1000;
        let ok = |v: i64| (1000..=day).contains(&v);
        if !ok(self.weak_after_ms) || !ok(self.lost_after_ms) || !ok(self.timeout_ms) {
            return Err(DomainError::new(
                "connection_periods",
                "out_of_range",
                "each period must be between 1 second and 1 day",
            ));
        }
        if self.lost_after_ms <= self.weak_after_ms {
            return Err(DomainError::new(
                "connection_periods",
                "out_of_order",
                "lost must come after weak",
            ));
        }
        Ok(())
    }
}

/// An agent's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Takes new chats.
    Online,
    /// Keeps their chats, takes no new ones.
    Away,
    Offline,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Away => "away",
            AgentStatus::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Online, Self::Away, Self::Offline]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_states_follow_the_periods() {
        let p = ConnectionPeriods {
            weak_after_ms: 30_000,
            lost_after_ms: 90_000,
            timeout_ms: 600_000,
        };
        let t = |ms| crate::Timestamp(ms);
        assert_eq!(
            p.state_at(t(0), t(29_999)),
            Some(VisitorConnection::Connected)
        );
        assert_eq!(p.state_at(t(0), t(30_000)), Some(VisitorConnection::Weak));
        assert_eq!(p.state_at(t(0), t(90_000)), Some(VisitorConnection::Lost));
        assert_eq!(p.state_at(t(0), t(690_000)), None);
        assert!(p.validate().is_ok());
        assert!(
            ConnectionPeriods {
                lost_after_ms: 30_000,
                ..p
            }
            .validate()
            .is_err()
        );
        assert!(
            ConnectionPeriods {
                timeout_ms: 10,
                ..p
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn bodies() {
        assert_eq!(
            MessageBody::parse("  hi\n there ").unwrap().as_str(),
            "hi\n there"
        );
        assert_eq!(MessageBody::parse(" ").unwrap_err().code, "required");
        assert_eq!(
            MessageBody::parse(&"x".repeat(4001)).unwrap_err().code,
            "too_long"
        );
        assert_eq!(
            MessageBody::parse("a\u{7}b").unwrap_err().code,
            "invalid_characters"
        );
        assert!(
            MessageBody::parse("<img src=x onerror=alert(1)>").is_ok(),
            "text, shown as text"
        );
    }

    #[test]
    fn client_msg_ids_and_names_round_trip() {
        assert!(ClientMsgId::parse("m-01_x").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(ClientMsgId::parse(bad).is_err());
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            // The stored name is also the protocol's (serde) name.
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        let a = Author::Agent(UserId::from_uuid(uuid::Uuid::from_u128(7)));
        assert_eq!(Author::parse(&a.to_stored()), Some(a));
        assert_eq!(Author::parse("agent:nope"), None);
        assert_eq!(AgentStatus::parse("away"), Some(AgentStatus::Away));
        assert_eq!(
            ConversationStatus::parse("ended"),
            Some(ConversationStatus::Ended)
        );
    }
}
