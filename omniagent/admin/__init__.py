"""Admin building blocks shared by every app's admin.py: tenant scoping, write-only secrets, audit."""
