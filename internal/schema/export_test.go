package schema

import (
	"strings"

	"github.com/jackc/tern/v2/migrate"
)

// MigrationVersion is the version of the migration whose file name ends in
// suffix ("_key.sql"), 0 when there is none: tests name a migration by what
// it does, not by a number that may change when branches merge.
func MigrationVersion(suffix string) int32 {
	paths, err := migrate.FindMigrations(migrationsFS())
	if err != nil {
		panic(err)
	}
	for i, p := range paths {
		if strings.HasSuffix(p, suffix) {
			return int32(i + 1)
		}
	}
	return 0
}
