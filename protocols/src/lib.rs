//! Sans-IO protocol code shared by the recorder and the replayer: the [`Exchange`] model,
//! protocol [detection](detect), and stream decoders behind one trait, [`StreamDecoder`].
//!
//! A decoder is fed the bytes of one connection, per [`Direction`], in stream order
//! (`push`), is told about bytes the capture lost (`gap`) and about the end of the connection
//! (`close`), and hands out paired [`Exchange`]s (`drain`). Decoders never do I/O, never panic
//! on any input, give the same output however the bytes are split, and bound their memory.

mod decoder;
mod detect;
mod http;
mod json_path;
mod model;
mod mysql;
mod payload;
mod redis;

pub use decoder::{detect, new_decoder, DecoderConfig, Detection, StreamDecoder};
pub use http::HttpDecoder;
pub use json_path::{parse_json_path, JsonPathError, JsonStep};
pub use model::sql_interface;
pub use model::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse,
    MysqlColumn, MysqlCommand, MysqlResponse, MysqlResultSet, MysqlSession, MysqlValue, Protocol,
    RedisCommand, Request, RespValue, Response, Role, SessionInfo, Timing,
};
pub use mysql::MysqlDecoder;
pub use payload::Payload;
pub use redis::RedisDecoder;

/// Which way bytes flow on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server: requests.
    Request,
    /// Server to client: responses.
    Response,
}
