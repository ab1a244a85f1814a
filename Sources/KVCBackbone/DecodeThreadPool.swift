import Foundation
import Synchronization

/// Persistent worker threads for the decode kernels, which hand out ~120 small jobs per token (four products per
/// layer plus the output head, a few tens of microseconds each).
///
/// Why not GCD: `concurrentPerform` wakes its workers through the kernel every time, and on this machine that wake-up
/// costs about as much as a job, so two threads decoded only 17% faster than one (119 vs 102 tok/s). Here workers
/// spin on an atomic job counter between jobs, as ggml's thread pool does, and park on a condition variable only
/// after `spinLimit` idle polls, so a process that stops decoding does not burn a core.
public final class DecodeThreadPool: @unchecked Sendable {
    /// Threads taking part in a job, the caller included.
    let threadCount: Int

    // Job state: generation << 1 | open. A job is published by bumping the generation with the open bit set, and
    // closed when all its chunks are done. Workers register in `active` before reading the job, and the caller waits
    // for `active` to drain after closing, so the job's fields are never rewritten under a worker that reads them
    // (store-buffer pattern: both sides use sequentially consistent operations).
    private let state = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)      // a caller owns the pool
    private let active = Atomic<Int>(0)
    private let nextChunk = Atomic<Int>(0)      // next chunk index to hand out
    private let doneChunks = Atomic<Int>(0)     // chunks finished
    private let sleepers = Atomic<Int>(0)       // workers parked on `wake`
    private let wake = NSCondition()
    private var job: ((Int) -> Void)?
    private var chunkCount = 0
    private var generation = 0                  // the caller's count of published jobs

    /// Idle polls before a worker parks: `yieldAfter` fast polls, then polls that each yield (about a microsecond),
    /// so tens of milliseconds in all, which covers the gaps between the products of a decode step and between tokens.
    static let spinLimit = 50_000

    private static let lock = NSLock()
    nonisolated(unsafe) private static var pools: [Int: DecodeThreadPool] = [:]

    /// The process-wide pool for `threads` threads (created on first use; its workers live as long as the process).
    public static func shared(threads: Int) -> DecodeThreadPool {
        lock.lock()
        defer { lock.unlock() }
        if let pool = pools[threads] { return pool }
        let pool = DecodeThreadPool(threads: threads)
        pools[threads] = pool
        return pool
    }

    private init(threads: Int) {
        threadCount = max(1, threads)
        for _ in 1..<threadCount {
            let thread = Thread { [unowned self] in self.workerLoop() }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Runs `body(0..<chunks)` across the pool's threads, chunks handed out dynamically (a descheduled thread's share is
    /// taken by the others), and returns when all are done.
    public func run(chunks: Int, _ body: (Int) -> Void) {
        // A second caller (another thread's forward pass, or a job that nests) runs its chunks itself.
        guard threadCount > 1, chunks > 1,
              busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for c in 0..<chunks { body(c) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { body in
            job = body
            chunkCount = chunks
            nextChunk.store(0, ordering: .relaxed)
            doneChunks.store(0, ordering: .relaxed)
            generation += 1
            state.store(generation << 1 | 1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                wake.lock()
                wake.broadcast()
                wake.unlock()
            }
            work(body, chunks: chunks)
            var polls = 0
            while doneChunks.load(ordering: .acquiring) < chunks { Self.pause(&polls) }
            state.store(generation << 1, ordering: .sequentiallyConsistent)
            while active.load(ordering: .sequentiallyConsistent) > 0 { Self.pause(&polls) }
            job = nil
        }
    }

    private func work(_ body: (Int) -> Void, chunks: Int) {
        while true {
            let c = nextChunk.add(1, ordering: .relaxed).oldValue
            if c >= chunks { return }
            body(c)
            doneChunks.add(1, ordering: .releasing)
        }
    }

    private func workerLoop() {
        var seen = 0
        var polls = 0
        while true {
            let s = state.load(ordering: .acquiring)
            if s >> 1 != seen {
                if s & 1 == 1 {
                    active.add(1, ordering: .sequentiallyConsistent)
                    let current = state.load(ordering: .sequentiallyConsistent)
                    if current == s, let body = job { work(body, chunks: chunkCount) }
                    active.subtract(1, ordering: .sequentiallyConsistent)
                }
                seen = s >> 1
                polls = 0
            } else if polls < Self.spinLimit {
                Self.pause(&polls)
            } else {
                wake.lock()
                sleepers.add(1, ordering: .sequentiallyConsistent)
                while state.load(ordering: .sequentiallyConsistent) >> 1 == seen { wake.wait() }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                wake.unlock()
                polls = 0
            }
        }
    }

    /// A spin-wait step. After `yieldAfter` polls each step also yields the core: when the machine runs more
    /// threads than it has cores, the thread being waited for may need it.
    @inline(__always) private static func pause(_ polls: inout Int) {
        polls += 1
        if polls > yieldAfter { sched_yield() }
    }

    static let yieldAfter = 2_000
}
