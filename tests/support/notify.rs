//! Test helpers of the notify feature.
