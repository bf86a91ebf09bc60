//! pushgate: a reverse proxy that adds real-time push (WebSocket, SSE,
//! long polling) to existing HTTP APIs.
//!
//! See `ARCHITECTURE.md` for the map of modules and the life of a request
//! and of a message. [`app`] wires everything; the binary is `main.rs`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backplane;
pub mod config;
pub mod error;
pub mod files;
pub mod generation;
pub mod grip;
pub mod hooks;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod presence;
pub mod proxy;
pub mod publish;
pub mod realtime;
pub mod reload;
pub mod router;
pub mod service;
pub mod shutdown;
pub mod telemetry;
