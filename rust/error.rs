//! The one error type of the crate.

use std::io;

/// Errors produced while reading, writing or using embeddings.
///
/// Every variant carries the data needed to understand the problem; the
/// `Display` text says what went wrong and, where it helps, how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file does not start with the expected magic bytes.
    /// Check that the file really is of the format you are opening.
    #[error("not a {format} file: bad magic {} (expected {})", show_bytes(.got), show_bytes(.expected))]
    Magic {
        format: &'static str,
        expected: Vec<u8>,
        got: Vec<u8>,
    },

    /// The format version is not supported.
    #[error("unsupported {format} version {got} (supported: {expected})")]
    Version {
        format: &'static str,
        expected: String,
        got: String,
    },

    /// A chunk identifier that this implementation does not know.
    #[error("unknown chunk id {0}")]
    UnknownChunk(u32),

    /// A chunk appeared where another kind was expected.
    #[error("unexpected chunk: expected {expected}, found {got}")]
    UnexpectedChunk { expected: &'static str, got: String },

    /// The data ended before a value could be read.
    #[error("truncated {what}: need {need} bytes at offset {offset}, but only {have} remain")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        have: u64,
    },

    /// Arithmetic on sizes read from the file overflowed.
    #[error("size overflow while computing {0}")]
    Overflow(&'static str),

    /// A value read from a file is outside its allowed range or disagrees with another value.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },

    /// A string in the file is not valid UTF-8 (strict reading).
    #[error("invalid UTF-8 in {what} {index}: {source}")]
    Utf8 {
        what: &'static str,
        index: u64,
        #[source]
        source: std::str::Utf8Error,
    },

    /// The metadata chunk is not valid TOML (see [`Error::toml`]).
    #[error("invalid metadata TOML: {0}")]
    Toml(String),

    /// A buffer the data needs cannot be allocated (raised as Python's MemoryError).
    #[error("not enough memory for the {what}: {bytes} bytes ({} MiB) cannot be allocated", bytes >> 20)]
    OutOfMemory { what: &'static str, bytes: u64 },

    /// A bad argument passed by the caller (not a file problem).
    #[error("{0}")]
    Argument(String),

    /// A word with no embedding (not in the vocabulary and no subwords).
    #[error("{0}")]
    UnknownWord(String),

    /// The operation was interrupted (Ctrl-C from Python; see [`crate::cancel`]).
    #[error("interrupted")]
    Interrupted,

    /// An operating-system I/O error, with context.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with a context message (usually what was done and the path).
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A value that is out of range or inconsistent.
    pub fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }

    /// A bad argument.
    pub fn argument(message: impl Into<String>) -> Self {
        Error::Argument(message.into())
    }

    /// [`Error::Toml`] from the parser's error, on one line: where and what, without the
    /// source excerpt the parser draws under it (an error message is one line).
    pub fn toml(e: &toml::de::Error) -> Error {
        let text = e.to_string();
        // the excerpt's lines: "|", "1 | key = value", "|   ^^^"
        let excerpt = |l: &str| l.starts_with('|') || l.split_once(" |").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
        let parts: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !excerpt(l)).collect();
        Error::Toml(parts.join(": "))
    }

    /// True if this error describes a malformed file (as opposed to I/O or arguments).
    pub fn is_format(&self) -> bool {
        !matches!(
            self,
            Error::Io { .. } | Error::Argument(_) | Error::UnknownWord(_) | Error::OutOfMemory { .. } | Error::Interrupted
        )
    }

    /// Prefix the error with where it happened (e.g. the file path).
    #[must_use]
    pub fn context(self, ctx: impl std::fmt::Display) -> Self {
        match self {
            Error::Io { context, source } => Error::Io {
                context: format!("{ctx}: {context}"),
                source,
            },
            Error::Invalid { what, message } => Error::Invalid {
                what,
                message: format!("{message} ({ctx})"),
            },
            other => other,
        }
    }
}

/// Magic bytes as a Python-like byte string: `b"12 5"`, `b"\xba\x16O/"`.
fn show_bytes(b: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &c in b {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(c as char),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push('"');
    out
}
