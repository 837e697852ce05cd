//! Files that hold secrets (sealing keys, the signing key, the store): created readable by
//! their owner only, and refused when group or others may read them, the way ssh refuses a
//! private key, with a message that names the file and the fix.

use std::fs::OpenOptions;
use std::path::Path;

/// Options that create a new file with mode 0600 (on Unix).
pub fn create_new() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// `Err` (naming the file, its mode and the fix) when group or others may read or write `path`.
/// A file that does not exist passes: reading it reports that.
pub fn check(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} is open to group or others (mode {mode:04o}); it holds secrets: run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_for_its_owner_only_and_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_new().open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(check(&path).is_ok());
    }

    #[test]
    fn a_file_open_to_group_or_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "x").unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o606, 0o700 | 0o004] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = check(&path).unwrap_err();
            assert!(
                error.contains("chmod 600") && error.contains(&path.display().to_string()),
                "{error}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(check(&path).is_ok());
        }
    }
}
