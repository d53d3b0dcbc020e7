/* SPDX-License-Identifier: Apache-2.0 */

ALTER TABLE job_versions ADD job_context_uuid UUID NOT NULL;
