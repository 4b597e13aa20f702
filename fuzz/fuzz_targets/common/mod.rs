//! What the fuzz targets share: input formats, the strict RFC 5321/5322 reading, the
//! in-memory client, and the depth report. Each target uses a part of it.
#![allow(dead_code)]

pub mod depth;
pub mod memory;
pub mod preauth_model;
pub mod strict;
pub mod tls_pair;
pub mod transcript;
