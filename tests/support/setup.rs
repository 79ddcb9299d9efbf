//! Test helpers of the setup feature.
