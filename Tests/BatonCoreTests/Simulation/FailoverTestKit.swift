@testable import BatonCore

extension Instant {
    /// Tests count time from zero in milliseconds.
    static func milliseconds(_ count: UInt64) -> Instant { Instant(nanoseconds: count * 1_000_000) }
}
