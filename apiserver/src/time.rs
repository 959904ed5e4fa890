//! Wall-clock time for timestamps the server stamps on objects.

pub use hanul_proto::time::now;
