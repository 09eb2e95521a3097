"""Admin building blocks shared by every app's admin.py: tenant scoping, write-only secrets, audit.

An app's admin derives from `omniagent.admin.options.TenantScopedAdmin` (and `TenantScopedInline`
for inlines) and gets, without further code: querysets limited to the user's tenants (superusers:
all), role-based rights (owner/admin change, viewer looks), 404 for another tenant's object, FK
choices limited to the user's tenants, write-only inputs with a set/not-set badge for every
EncryptedTextField, and an AuditLog row per add/change/delete. Set `read_only = True` for logs.
"""
