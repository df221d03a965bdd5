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
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Started,
            Self::Assigned,
            Self::Message,
            Self::Transferred,
            Self::Requeued,
            Self::Ended,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
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
        for k in [
            "started",
            "assigned",
            "message",
            "transferred",
            "requeued",
            "ended",
        ] {
            assert_eq!(EventKind::parse(k).unwrap().as_str(), k);
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
