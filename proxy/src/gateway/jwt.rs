//! JWT authentication at the edge (written next).
