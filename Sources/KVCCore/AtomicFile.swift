import Foundation

/// Writes go to a temporary name in the same directory, are flushed to disk, then renamed over the target,
/// so a crash or a full disk never leaves a half-written file under the real name.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmpPrefix = "." + url.lastPathComponent + ".tmp-"
        removeStaleTemporaries(directory: dir, prefix: tmpPrefix)
        let tmp = dir + "/" + tmpPrefix + "\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw KVCError.file(tmp, "cannot create: \(String(cString: strerror(errno)))") }
        var ok = false
        defer { if !ok { close(fd); unlink(tmp) } }
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw KVCError.file(path, "write failed after \(offset) of \(raw.count) bytes: "
                                        + String(cString: strerror(errno)) + " (previous file left intact)")
                }
                offset += n
            }
        }
        guard fsync(fd) == 0 else {
            throw KVCError.file(path, "fsync failed: \(String(cString: strerror(errno))) (previous file left intact)")
        }
        close(fd)
        ok = true
        guard rename(tmp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmp)
            throw KVCError.file(path, "rename from temporary file failed: \(reason)")
        }
        // The rename itself must reach the disk too, or a power cut could bring back the old file (or none).
        let dirFD = open(dir, O_RDONLY)
        if dirFD >= 0 { _ = fsync(dirFD); close(dirFD) }
    }

    /// Deletes temporaries of `prefix` left by writers that no longer run (a SIGKILL between create and rename),
    /// so interrupted jobs do not pile up half-written copies of large files. Live writers' files are kept.
    static func removeStaleTemporaries(directory: String, prefix: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            guard let pid = pid_t(name.dropFirst(prefix.count)), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(directory + "/" + name) }
        }
    }

    public static func write(_ string: String, to path: String) throws {
        try write(Data(string.utf8), to: path)
    }
}
