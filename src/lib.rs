//! peercam: capture a camera, encode H.264 once, and stream it peer-to-peer to every
//! viewer's browser over WebRTC, with MQTT carrying only the signaling.
//!
//! The modules follow the pipeline: `source` → `encode` → `fanout` → `session`, with
//! `signaling`, `telemetry`, `config` and `service` beside it. See docs/ARCHITECTURE.md.

pub mod auth;
pub mod clock;
pub mod config;
pub mod encode;
pub mod fanout;
pub mod h264;
pub mod health;
pub mod homeassistant;
pub mod http;
pub mod ice;
pub mod listener;
pub mod log_throttle;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod probe;
pub mod service;
pub mod session;
pub mod signaling;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod tls;
