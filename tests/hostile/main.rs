//! The hostile boot network (issue 14): each attack an unauthenticated host
//! on the boot network could try, run against the real server, asserting
//! both that it fails and that the same flow done legitimately from the
//! machine's bound address still works. One module per area.

mod binding;
mod bounds;
#[path = "../common/mod.rs"]
mod common;
mod dhcp;
mod durability;
mod fetch;
mod rollout;
#[path = "../common/tftp_client.rs"]
mod tftp_client;
