//! Requests and responses inside the channel. Layout (all integers big-endian):
//!
//! ```text
//! request  = version u8 | kind u8 | client_time_ms u64 | body | zero padding to MESSAGE_LEN
//! response = version u8 | kind u8 | body | zero padding to MESSAGE_LEN
//! ```
//!
//! Every message has the same length, so neither the host nor a network
//! observer learns an outcome from sizes.

use crate::suite::sizes;
use crate::wire::Reader;
use crate::{DecodeError, PROTOCOL_VERSION};

/// Length of every request and response plaintext.
pub const MESSAGE_LEN: usize = 448;

/// Longest wrapped key a registration may store.
pub const MAX_WRAPPED_KEY: usize = 96;

/// Value of `attempts_remaining` when it does not apply.
const NO_ATTEMPTS: u8 = 0xff;

/// Client → trusted core.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// OPAQUE registration, first message.
    RegisterStart {
        /// Replace an existing registration (destroys its key).
        replace: bool,
        /// Guess limit asked for (bounded by the realm).
        max_attempts: u8,
        /// RegistrationRequest.
        request: [u8; sizes::REGISTRATION_REQUEST],
    },
    /// OPAQUE registration upload plus the wrapped backup key.
    RegisterFinish {
        /// RegistrationUpload.
        upload: Box<[u8; sizes::REGISTRATION_UPLOAD]>,
        /// `K` wrapped under a key derived from the OPAQUE export key.
        wrapped_key: Vec<u8>,
    },
    /// KE1: spends one attempt.
    LoginStart {
        /// KE1.
        ke1: Box<[u8; sizes::KE1]>,
    },
    /// KE3: a correct one releases the wrapped key and resets the count.
    LoginFinish {
        /// KE3.
        ke3: Box<[u8; sizes::KE3]>,
    },
    /// Erase the record; needs a successful login in this session.
    Delete,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print message contents: they are protocol values a log must not keep.
        f.write_str(self.name())
    }
}

impl Request {
    /// The request's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::RegisterStart { .. } => "RegisterStart",
            Request::RegisterFinish { .. } => "RegisterFinish",
            Request::LoginStart { .. } => "LoginStart",
            Request::LoginFinish { .. } => "LoginFinish",
            Request::Delete => "Delete",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Request::RegisterStart { .. } => 0x01,
            Request::RegisterFinish { .. } => 0x02,
            Request::LoginStart { .. } => 0x03,
            Request::LoginFinish { .. } => 0x04,
            Request::Delete => 0x05,
        }
    }

    /// Encodes with the sender's clock (milliseconds since the Unix epoch).
    pub fn encode(&self, client_time_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_LEN);
        out.push(PROTOCOL_VERSION);
        out.push(self.kind());
        out.extend_from_slice(&client_time_ms.to_be_bytes());
        match self {
            Request::RegisterStart {
                replace,
                max_attempts,
                request,
            } => {
                out.push(u8::from(*replace));
                out.push(*max_attempts);
                out.extend_from_slice(request);
            }
            Request::RegisterFinish {
                upload,
                wrapped_key,
            } => {
                out.extend_from_slice(&upload[..]);
                let len = wrapped_key.len().min(MAX_WRAPPED_KEY);
                out.push(len as u8);
                out.extend_from_slice(&wrapped_key[..len]);
            }
            Request::LoginStart { ke1 } => out.extend_from_slice(&ke1[..]),
            Request::LoginFinish { ke3 } => out.extend_from_slice(&ke3[..]),
            Request::Delete => {}
        }
        out.resize(MESSAGE_LEN, 0);
        out
    }

    /// Decodes a request; returns it with the client's clock.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u64), DecodeError> {
        if bytes.len() != MESSAGE_LEN {
            return Err(DecodeError::Malformed("request is not exactly 448 bytes"));
        }
        let mut r = Reader::new(bytes, "request");
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = r.u8()?;
        let time = r.u64()?;
        let req = match kind {
            0x01 => {
                let replace = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Malformed("replace flag is not 0 or 1")),
                };
                let max_attempts = r.u8()?;
                Request::RegisterStart {
                    replace,
                    max_attempts,
                    request: r.array()?,
                }
            }
            0x02 => {
                let upload = Box::new(r.array()?);
                let len = usize::from(r.u8()?);
                if len == 0 || len > MAX_WRAPPED_KEY {
                    return Err(DecodeError::Malformed("wrapped key length out of range"));
                }
                Request::RegisterFinish {
                    upload,
                    wrapped_key: r.take(len)?.to_vec(),
                }
            }
            0x03 => Request::LoginStart {
                ke1: Box::new(r.array()?),
            },
            0x04 => Request::LoginFinish {
                ke3: Box::new(r.array()?),
            },
            0x05 => Request::Delete,
            kind => {
                return Err(DecodeError::Kind {
                    what: "request",
                    kind,
                })
            }
        };
        r.finish_padding()?;
        Ok((req, time))
    }
}

/// Why the trusted core refused a request. Inside the channel: the host never sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// No key is registered for this user (never registered, disabled, or erased).
    NotRegistered = 1,
    /// The password was wrong; `attempts_remaining` says how many are left (0: erased).
    WrongPassword = 2,
    /// A key is already registered and `replace` was not set.
    AlreadyRegistered = 3,
    /// The request could not be decoded.
    BadRequest = 4,
    /// A request out of order for this session (e.g. KE3 without KE1).
    OutOfOrder = 5,
    /// The request needs a successful login in this session first.
    NotAuthenticated = 6,
    /// The client's clock is too far from the core's; `server_time_ms` says the core's.
    ClockSkew = 7,
    /// This session-opening message was seen before.
    Replayed = 8,
    /// The record store does not match the core's trusted state (rolled back or tampered).
    StoreIntegrity = 9,
    /// The registration's policy is outside the realm's bounds.
    PolicyRejected = 10,
    /// The core is busy (session table full); retry later.
    Busy = 11,
}

impl ErrorCode {
    fn from_u8(b: u8) -> Option<Self> {
        use ErrorCode::*;
        Some(match b {
            1 => NotRegistered,
            2 => WrongPassword,
            3 => AlreadyRegistered,
            4 => BadRequest,
            5 => OutOfOrder,
            6 => NotAuthenticated,
            7 => ClockSkew,
            8 => Replayed,
            9 => StoreIntegrity,
            10 => PolicyRejected,
            11 => Busy,
            _ => return None,
        })
    }

    /// A sentence for users and logs.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::NotRegistered => "no key is registered in the vault for this user (never registered, disabled, or erased after too many wrong passwords)",
            ErrorCode::WrongPassword => "wrong password",
            ErrorCode::AlreadyRegistered => "a key is already registered for this user",
            ErrorCode::BadRequest => "the vault could not decode the request",
            ErrorCode::OutOfOrder => "request out of order for this session",
            ErrorCode::NotAuthenticated => "this operation needs the password first",
            ErrorCode::ClockSkew => "the client's clock is too far from the vault's",
            ErrorCode::Replayed => "the vault has seen this message before (replay refused)",
            ErrorCode::StoreIntegrity => "the vault refuses to answer: its record store does not match its trusted state (rolled back or tampered); an operator must restore the latest store",
            ErrorCode::PolicyRejected => "the requested guess limit is outside the realm's bounds",
            ErrorCode::Busy => "the vault is busy; retry shortly",
        }
    }
}

/// Trusted core → client.
#[derive(Clone, PartialEq, Eq)]
pub enum Response {
    /// RegistrationResponse.
    RegisterStarted {
        /// RegistrationResponse.
        response: [u8; sizes::REGISTRATION_RESPONSE],
    },
    /// The registration is stored.
    Registered {
        /// The guess limit in force.
        max_attempts: u8,
    },
    /// KE2; one attempt has been spent durably.
    LoginStarted {
        /// Attempts left after this one if it fails.
        attempts_remaining: u8,
        /// KE2.
        ke2: Box<[u8; sizes::KE2]>,
    },
    /// The password was right: the wrapped key, and the count is reset.
    LoginOk {
        /// The guess limit, now fully available again.
        max_attempts: u8,
        /// The key as the client wrapped it at registration.
        wrapped_key: Vec<u8>,
    },
    /// The record is erased.
    Deleted,
    /// A refusal.
    Error {
        /// Why.
        code: ErrorCode,
        /// For failed attempts: how many remain.
        attempts_remaining: Option<u8>,
        /// The core's clock (ms since the Unix epoch), for [`ErrorCode::ClockSkew`].
        server_time_ms: u64,
    },
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Error {
                code,
                attempts_remaining,
                ..
            } => write!(
                f,
                "Error({code:?}, attempts_remaining={attempts_remaining:?})"
            ),
            Response::LoginStarted {
                attempts_remaining, ..
            } => write!(f, "LoginStarted(attempts_remaining={attempts_remaining})"),
            Response::RegisterStarted { .. } => f.write_str("RegisterStarted"),
            Response::Registered { max_attempts } => write!(f, "Registered({max_attempts})"),
            Response::LoginOk { .. } => f.write_str("LoginOk"),
            Response::Deleted => f.write_str("Deleted"),
        }
    }
}

impl Response {
    /// An error without an attempt count.
    pub fn error(code: ErrorCode, server_time_ms: u64) -> Self {
        Response::Error {
            code,
            attempts_remaining: None,
            server_time_ms,
        }
    }

    /// Encodes to exactly [`MESSAGE_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_LEN);
        out.push(PROTOCOL_VERSION);
        match self {
            Response::RegisterStarted { response } => {
                out.push(0x81);
                out.extend_from_slice(response);
            }
            Response::Registered { max_attempts } => {
                out.push(0x82);
                out.push(*max_attempts);
            }
            Response::LoginStarted {
                attempts_remaining,
                ke2,
            } => {
                out.push(0x83);
                out.push(*attempts_remaining);
                out.extend_from_slice(&ke2[..]);
            }
            Response::LoginOk {
                max_attempts,
                wrapped_key,
            } => {
                out.push(0x84);
                out.push(*max_attempts);
                let len = wrapped_key.len().min(MAX_WRAPPED_KEY);
                out.push(len as u8);
                out.extend_from_slice(&wrapped_key[..len]);
            }
            Response::Deleted => out.push(0x85),
            Response::Error {
                code,
                attempts_remaining,
                server_time_ms,
            } => {
                out.push(0xee);
                out.push(*code as u8);
                out.push(attempts_remaining.unwrap_or(NO_ATTEMPTS));
                out.extend_from_slice(&server_time_ms.to_be_bytes());
            }
        }
        out.resize(MESSAGE_LEN, 0);
        out
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != MESSAGE_LEN {
            return Err(DecodeError::Malformed("response is not exactly 448 bytes"));
        }
        let mut r = Reader::new(bytes, "response");
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        let resp = match r.u8()? {
            0x81 => Response::RegisterStarted {
                response: r.array()?,
            },
            0x82 => Response::Registered {
                max_attempts: r.u8()?,
            },
            0x83 => Response::LoginStarted {
                attempts_remaining: r.u8()?,
                ke2: Box::new(r.array()?),
            },
            0x84 => {
                let max_attempts = r.u8()?;
                let len = usize::from(r.u8()?);
                if len == 0 || len > MAX_WRAPPED_KEY {
                    return Err(DecodeError::Malformed("wrapped key length out of range"));
                }
                Response::LoginOk {
                    max_attempts,
                    wrapped_key: r.take(len)?.to_vec(),
                }
            }
            0x85 => Response::Deleted,
            0xee => {
                let code = ErrorCode::from_u8(r.u8()?)
                    .ok_or(DecodeError::Malformed("unknown error code"))?;
                let attempts = r.u8()?;
                Response::Error {
                    code,
                    attempts_remaining: (attempts != NO_ATTEMPTS).then_some(attempts),
                    server_time_ms: r.u64()?,
                }
            }
            kind => {
                return Err(DecodeError::Kind {
                    what: "response",
                    kind,
                })
            }
        };
        r.finish_padding()?;
        Ok(resp)
    }
}
