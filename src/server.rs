//! HTTP service (SPEC §6, `doorstep serve`): a thin shell over [`crate::pipeline`], as the
//! CLI is. Not built yet: a later issue fills this in.
