// Goal (issue 9): a NIC of this node that loses its link has its MPTCP
// endpoint withdrawn once, and announced again once when the link is back.
import BatonCore
import XCTest

final class LocalPathsTests: XCTestCase {
    func testAnEndpointIsWithdrawnWhenItsLinkGoesAndAnnouncedWhenItComesBack() {
        var paths = LocalPaths()
        XCTAssertNil(paths.observed("198.18.2.1", up: true), "announced at start already")
        XCTAssertNil(paths.observed("198.18.2.1", up: true))
        XCTAssertEqual(paths.observed("198.18.2.1", up: false), .withdraw(address: "198.18.2.1"))
        XCTAssertTrue(paths.isDown("198.18.2.1"))
        XCTAssertNil(paths.observed("198.18.2.1", up: false), "withdrawn twice")
        XCTAssertEqual(paths.observed("198.18.2.1", up: true), .announce(address: "198.18.2.1"))
        XCTAssertFalse(paths.isDown("198.18.2.1"))
        // Each address on its own.
        XCTAssertEqual(paths.observed("198.18.1.1", up: false), .withdraw(address: "198.18.1.1"), "down when first seen")
        XCTAssertNil(paths.observed("198.18.2.1", up: true))
    }
}
