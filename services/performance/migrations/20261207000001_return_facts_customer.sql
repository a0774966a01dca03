-- A customer's returns are read with its orders whenever one of its orders changes (the
-- distinct-customer rollups are a function of both): without this index every read scanned
-- every return.
CREATE INDEX return_facts_customer ON return_facts (customer_id);
