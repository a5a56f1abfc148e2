include!("../scripts/rpath_build.rs");
