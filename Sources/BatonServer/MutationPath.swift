import Dispatch
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The export's mutation lock and the thread that waits for it. Mutations,
/// syncs and checkpoint cuts hold the lock, one at a time, in journal order
/// (a checkpoint is written without it: `ExportStore.checkpointRunner`).
///
/// A network thread never waits for it: heartbeats and the monitor's
/// challenges are answered on the network threads, and a thread that waited
/// behind an fsync (hundreds of milliseconds under heavy IO,
/// seconds on a slow disk) fell silent and had a healthy server failed over.
/// A network thread runs a mutation in place when the lock is free (the fast
/// path: no thread hop); otherwise it hands the mutation to the mutation
/// thread, and so does every later mutation of that connection until those
/// handed over have run, so that a connection's requests keep their order.
/// Syncs always run on the mutation thread: they wait for the disk.
final class MutationPath: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private let thread = DispatchQueue(label: "baton.mutations")
    /// When the current holder took the lock (nil: free), for `heldFor`.
    private let heldSince = NIOLockedValueBox<NIODeadline?>(nil)

    /// One connection's mutations handed to the mutation thread and not run yet.
    final class Order: @unchecked Sendable {
        fileprivate let handedOver = NIOLockedValueBox(0)
    }

    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    func lock() {
        pthread_mutex_lock(&mutex)
        heldSince.withLockedValue { $0 = .now() }
    }

    func unlock() {
        heldSince.withLockedValue { $0 = nil }
        pthread_mutex_unlock(&mutex)
    }

    func tryLock() -> Bool {
        guard pthread_mutex_trylock(&mutex) == 0 else { return false }
        heldSince.withLockedValue { $0 = .now() }
        return true
    }

    /// Blocks until the lock is free: for threads that are not network threads.
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// How long the current holder has held the lock; nil when it is free.
    var heldFor: TimeAmount? { heldSince.withLockedValue { $0.map { .now() - $0 } } }

    /// Runs `locked` with the lock held, then `then` with its result
    /// without it: in place when the lock is free and `order` has nothing
    /// handed over, on the mutation thread otherwise (or always, with
    /// `waitsForDisk`).
    func run<T: Sendable>(_ order: Order, waitsForDisk: Bool = false, _ locked: @escaping @Sendable () -> T,
                          then: @escaping @Sendable (T) -> Void) {
        if !waitsForDisk, order.handedOver.withLockedValue({ $0 == 0 }), tryLock() {
            let result = locked()
            unlock()
            return then(result)
        }
        order.handedOver.withLockedValue { $0 += 1 }
        thread.async { [self] in
            lock()
            let result = locked()
            unlock()
            order.handedOver.withLockedValue { $0 -= 1 }
            then(result)
        }
    }

    /// Runs `body` on the mutation thread with the lock held (work of the server's own, such as a lease expiry).
    func runOnMutationThread(_ body: @escaping @Sendable () -> Void) {
        thread.async { [self] in withLock(body) }
    }
}
