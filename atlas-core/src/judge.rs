//! Statistical judge: canary against stable samples.
