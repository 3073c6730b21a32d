//! The edge gateway (`weft-proxy gateway`): listeners for outside
//! clients, configured by a Gateway API `Gateway` and the routes attached
//! to it, forwarding into the mesh with the gateway's own identity.

pub mod jwt;
