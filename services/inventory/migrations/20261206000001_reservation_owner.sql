-- The principal that placed a reservation: only it (or an admin or service) may release,
-- fulfil, extend or read it. Reservations made before this column existed have no owner and
-- are settled by admins and services only.
ALTER TABLE reservations ADD COLUMN owner_id text NOT NULL DEFAULT '';
