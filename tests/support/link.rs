//! Test helpers of the link feature.
