"""boxoffice: high-throughput event ticket booking.

The one name boxoffice installs. The code lives in the repository's top-level folders
`service/`, `ledger/` and `lua/`; this package links to them (`boxoffice/service` is a link to
`../service`, and so on), so every import says `boxoffice.` in the repository and in the wheel
alike, and installing boxoffice beside another distribution with a `service` or `ledger`
package breaks neither.
"""
