//! Validation errors: what was wrong with an input, in words a user can act on.

/// A value from outside did not pass validation. `field` names the input, `code` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DomainError {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl DomainError {
    pub fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            field,
            code,
            message: message.into(),
        }
    }

    /// The same error, reported against another input field.
    pub fn map_field(self, field: &'static str) -> Self {
        DomainError { field, ..self }
    }
}
