// Goal (issue 9): a NIC of this node that loses its link has its MPTCP
// endpoint withdrawn once, and announced again once when the link is back;
// a link still coming up at the agent's start withdraws nothing.
import BatonCore
import XCTest

final class LocalPathsTests: XCTestCase {
    func testAnEndpointIsWithdrawnWhenItsLinkGoesAndAnnouncedWhenItComesBack() {
        var paths = LocalPaths()
        XCTAssertNil(paths.observed("198.18.2.1", up: true), "announced at start already")
        XCTAssertNil(paths.observed("198.18.2.1", up: true))
        XCTAssertEqual(paths.observed("198.18.2.1", up: false), .withdraw(address: "198.18.2.1"))
        XCTAssertTrue(paths.isWithdrawn("198.18.2.1"))
        XCTAssertNil(paths.observed("198.18.2.1", up: false), "withdrawn twice")
        XCTAssertEqual(paths.observed("198.18.2.1", up: true), .announce(address: "198.18.2.1"))
        XCTAssertFalse(paths.isWithdrawn("198.18.2.1"))
        XCTAssertNil(paths.observed("198.18.2.1", up: true), "announced twice")
    }

    /// Seen on the test bed: a NIC brought up just before the agent started
    /// had no carrier yet at its first tick; withdrawn and announced again,
    /// it cost the connections made meanwhile their subflow on that path.
    func testALinkDownWhenFirstSeenIsLeftAnnounced() {
        var paths = LocalPaths()
        XCTAssertNil(paths.observed("198.18.1.1", up: false))
        XCTAssertFalse(paths.isWithdrawn("198.18.1.1"))
        XCTAssertNil(paths.observed("198.18.1.1", up: true), "announced what was never withdrawn")
        XCTAssertEqual(paths.observed("198.18.1.1", up: false), .withdraw(address: "198.18.1.1"))
    }
}
