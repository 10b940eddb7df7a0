"""Read access for one user to a root-owned file, as ``setfacl -m u:UID:r`` gives it.

Written as the raw ``system.posix_acl_access`` xattr
(include/uapi/linux/posix_acl_xattr.h, include/uapi/linux/posix_acl.h), so
no library or setfacl binary is needed.  Used for the cores a user may read
(the handler) and for the per-user index views (:mod:`coredumpd.store.userview`).
"""

from __future__ import annotations

import os
import struct

from coredumpd.errors import StoreError

# posix_acl_xattr_header { __le32 a_version; } then entries
# posix_acl_xattr_entry { __le16 e_tag; __le16 e_perm; __le32 e_id; }
POSIX_ACL_XATTR_VERSION = 2
ACL_XATTR_HEADER = struct.Struct("<I")
ACL_XATTR_ENTRY = struct.Struct("<HHI")
assert ACL_XATTR_ENTRY.size == 8
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
ACL_READ = 4
ACL_WRITE = 2
ACL_XATTR_NAME = "system.posix_acl_access"


def acl_xattr(owner_perm: int, user_id: int, user_perm: int, group_perm: int,
              other_perm: int) -> bytes:
    """The ``system.posix_acl_access`` value granting ``user_id`` ``user_perm``.

    Entries are sorted by tag, then id, as the kernel requires
    (fs/posix_acl.c: posix_acl_valid()); ACL_MASK bounds the named user.
    """
    entries = [
        (ACL_USER_OBJ, owner_perm, ACL_UNDEFINED_ID),
        (ACL_USER, user_perm, user_id),
        (ACL_GROUP_OBJ, group_perm, ACL_UNDEFINED_ID),
        (ACL_MASK, user_perm | group_perm, ACL_UNDEFINED_ID),
        (ACL_OTHER, other_perm, ACL_UNDEFINED_ID),
    ]
    return ACL_XATTR_HEADER.pack(POSIX_ACL_XATTR_VERSION) + b"".join(
        ACL_XATTR_ENTRY.pack(*entry) for entry in entries)


def grant_read(fd: int, uid: int) -> None:
    """Let ``uid`` read the file on ``fd`` (mode stays 0640 for everyone else)."""
    value = acl_xattr(ACL_READ | ACL_WRITE, uid, ACL_READ, ACL_READ, 0)
    try:
        os.setxattr(fd, ACL_XATTR_NAME, value)
    except OSError as err:
        raise StoreError(f"cannot set the ACL for uid {uid}: {err.strerror}") from err
