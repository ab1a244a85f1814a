import KVCCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The bytes of a GGUF file: a read-only memory map of the file, or a caller's buffer.
///
/// A memory map stays valid while this object lives. If another process truncates the file underneath, the
/// kernel raises SIGBUS on access; that is the usual mmap trade-off and the reason the file is never written here.
final class GGUFStorage {
    let base: UnsafeRawPointer
    let count: Int
    private let release: () -> Void

    private init(base: UnsafeRawPointer, count: Int, release: @escaping () -> Void) {
        self.base = base
        self.count = count
        self.release = release
    }

    deinit { release() }

    static func map(path: String) throws -> GGUFStorage {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw KVCError.file(path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw KVCError.file(path, "cannot stat: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw KVCError.file(path, "not a regular file") }
        let size = Int(st.st_size)
        // mmap of zero bytes fails; give empty files a one-byte dummy so the parser reports the truncation.
        guard size > 0 else {
            let dummy = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
            return GGUFStorage(base: dummy, count: 0, release: { dummy.deallocate() })
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw KVCError.file(path, "cannot map \(size) bytes: \(String(cString: strerror(errno)))")
        }
        return GGUFStorage(base: UnsafeRawPointer(p), count: size, release: { munmap(p, size) })
    }

    /// Copies `bytes` into storage owned by this object.
    static func copy(_ bytes: UnsafeRawBufferPointer) -> GGUFStorage {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        if let src = bytes.baseAddress, bytes.count > 0 { p.copyMemory(from: src, byteCount: bytes.count) }
        return GGUFStorage(base: UnsafeRawPointer(p), count: bytes.count, release: { p.deallocate() })
    }

    /// Borrows `bytes` without copying; the caller keeps them alive and unchanged while the file is used.
    static func borrow(_ bytes: UnsafeRawBufferPointer) -> GGUFStorage {
        if let b = bytes.baseAddress { return GGUFStorage(base: b, count: bytes.count, release: {}) }
        return copy(bytes)
    }
}
